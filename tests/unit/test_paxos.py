"""The Paxos core driven by hand, one sentence of the protocol per test.

Each test steps cores with `step`/`tick`/`propose`/`read_index` and asserts on
the `Ready` they return; a tiny perfect network (`Net`) moves messages when a
test wants the whole cluster to make progress.
"""

import random

import pytest

from kvstore.membership import Membership, Schedule
from replica.messages import (
    NOOP,
    Ballot,
    CatchupReply,
    CatchupRequest,
    Heartbeat,
    HeartbeatAck,
    Nack,
    Phase1a,
    Phase1b,
    Phase2a,
    Phase2b,
    PreVote,
    PreVoteReply,
    ReadVouch,
    Vote,
)
from replica.paxos import CoreConfig, DurableState, NotLeader, PaxosCore, Ready, Role

CFG = CoreConfig(heartbeat_ticks=2, election_ticks=10, window=2, retransmit_ticks=3)


def core(rid=1, ids=(1, 2, 3), durable=None, applied=0, cfg=CFG) -> PaxosCore:
    return PaxosCore(rid, list(ids), durable or DurableState(), applied, random.Random(rid), cfg)


def sent(ready: Ready, kind) -> list:
    return [(dst, m) for dst, m in ready.messages if isinstance(m, kind)]


class Net:
    """Delivers every message at once, in order; records what was applied."""

    def __init__(self, n=3, cfg=CFG):
        ids = list(range(1, n + 1))
        self.cores = {i: core(i, ids, cfg=cfg) for i in ids}
        self.applied = {i: [] for i in ids}
        self.reads = {i: [] for i in ids}
        self.down: set[int] = set()

    def handle(self, rid, ready):
        queue = [(dst, m) for dst, m in ready.messages]
        self.applied[rid].extend(ready.committed)
        self.reads[rid].extend(ready.reads)
        while queue:
            dst, msg = queue.pop(0)
            if dst in self.down or msg.sender in self.down:
                continue
            r = self.cores[dst].step(msg)
            self.applied[dst].extend(r.committed)
            self.reads[dst].extend(r.reads)
            queue.extend(r.messages)

    def tick(self, times=1):
        for _ in range(times):
            for rid, c in self.cores.items():
                if rid not in self.down:
                    self.handle(rid, c.tick())

    def leader(self):
        leaders = [c for rid, c in self.cores.items() if c.is_leader and rid not in self.down]
        return leaders[0] if leaders else None

    def elect(self):
        for _ in range(200):
            if self.leader():
                return self.leader()
            self.tick()
        raise AssertionError("no leader elected")


# --------------------------------------------------------------- acceptor


def test_acceptor_promises_a_higher_ballot_and_persists_before_replying():
    a = core(2)
    r = a.step(Phase1a(1, Ballot(1, 1), 0))
    assert r.promised == Ballot(1, 1)  # persisted in the same Ready, before...
    [(dst, p1b)] = sent(r, Phase1b)  # ...the reply that reveals it
    assert dst == 1 and p1b.ballot == Ballot(1, 1) and p1b.votes == {}


def test_acceptor_nacks_a_lower_ballot_with_its_promise():
    a = core(2)
    a.step(Phase1a(3, Ballot(5, 3), 0))
    r = a.step(Phase1a(1, Ballot(4, 1), 0))
    assert r.promised is None
    assert sent(r, Nack) == [(1, Nack(2, Ballot(4, 1), Ballot(5, 3)))]
    r = a.step(Phase2a(1, Ballot(4, 1), 0, (b"x",), 0))
    assert r.votes == {} and sent(r, Nack)


def test_acceptor_votes_and_the_vote_is_in_ready_with_the_phase2b():
    a = core(2)
    r = a.step(Phase2a(1, Ballot(1, 1), 7, (b"x",), 0))
    assert r.votes == {7: Vote(Ballot(1, 1), (b"x",))}
    assert r.promised == Ballot(1, 1)
    assert sent(r, Phase2b) == [(1, Phase2b(2, Ballot(1, 1), 7))]


def test_phase1b_reports_the_latest_vote_of_every_slot_from_from_slot():
    a = core(2)
    a.step(Phase2a(1, Ballot(1, 1), 3, (b"old",), 0))
    a.step(Phase2a(3, Ballot(2, 3), 3, (b"new",), 0))
    a.step(Phase2a(3, Ballot(2, 3), 5, (b"five",), 0))
    a.step(Phase2a(3, Ballot(2, 3), 1, (b"one",), 0))
    r = a.step(Phase1a(1, Ballot(3, 1), 2))
    [(_, p1b)] = sent(r, Phase1b)
    assert p1b.votes == {3: Vote(Ballot(2, 3), (b"new",)), 5: Vote(Ballot(2, 3), (b"five",))}


def test_messages_from_removed_replicas_are_ignored():
    ids = frozenset({1, 2, 3})
    removed = Membership(1, ids, removed=frozenset({9}), started=ids)
    a = PaxosCore(2, [1, 2, 3], DurableState(), 0, random.Random(2), CFG, Schedule([(0, removed)]))
    r = a.step(Phase1a(9, Ballot(1, 9), 0))
    assert r.messages == [] and r.promised is None and a.status().promised == Ballot(0, 0)
    # A replica we do not know yet (added by a change we have not learned)
    # is heard: its promise request is answered (only voters ever count).
    r = a.step(Phase1a(7, Ballot(1, 7), 0))
    assert sent(r, Phase1b) and r.promised == Ballot(1, 7)


def test_durable_state_is_restored_on_restart():
    durable = DurableState(Ballot(4, 2), {0: Vote(Ballot(4, 2), (b"a",))}, {})
    a = core(1, durable=durable, applied=1)
    assert a.status().promised == Ballot(4, 2)
    assert a.status().commit_index == 1 and a._log[0] == (b"a",)
    r = a.step(Phase1a(3, Ballot(3, 3), 0))  # lower than the restored promise
    assert sent(r, Nack)


# ---------------------------------------------------------------- election


def test_single_replica_elects_itself_and_commits_in_one_ready():
    c = core(1, ids=(1,))
    for _ in range(30):
        c.tick()
    assert c.is_leader
    r = c.propose([b"a", b"b"])
    assert r.votes and r.committed == [(0, (b"a", b"b"))]


def test_follower_campaigns_with_prevote_then_phase1_on_a_majority():
    c = core(1)
    r = Ready()
    for _ in range(2 * CFG.election_ticks):
        r = c.tick()
        if sent(r, PreVote):
            break
    status = c.status()
    assert status.role is Role.PRECANDIDATE and status.promised == Ballot(0, 0)  # disturbs nobody
    assert {dst for dst, _ in sent(r, PreVote)} == {2, 3}
    r = c.step(PreVoteReply(2, sent(r, PreVote)[0][1].round, True))
    assert c.status().role is Role.CANDIDATE
    assert r.promised == c.status().ballot and c.status().ballot.replica_id == 1
    assert {dst for dst, m in sent(r, Phase1a) if m.from_slot == 0} == {2, 3}


def test_prevote_is_refused_while_a_leader_is_heard_from():
    f = core(2)
    f.step(Heartbeat(1, Ballot(1, 1), 0, 1))
    r = f.step(PreVote(3, 2, 0))
    assert sent(r, PreVoteReply) == [(3, PreVoteReply(2, 2, False))]
    for _ in range(CFG.election_ticks):
        f.tick()
    r = f.step(PreVote(3, 2, 0))
    assert sent(r, PreVoteReply)[0][1].granted


def test_prevote_is_refused_to_a_candidate_that_knows_less_of_the_log():
    f = core(2, durable=DurableState(votes={0: Vote(Ballot(1, 1), (b"x",))}), applied=1)
    r = f.step(PreVote(3, 2, 0))
    assert not sent(r, PreVoteReply)[0][1].granted


def test_returning_replica_cannot_depose_a_healthy_leader():
    net = Net()
    leader = net.elect()
    old_ballot = leader.status().ballot
    lonely = next(rid for rid in net.cores if rid != leader.id)
    net.down.add(lonely)  # partitioned away: it campaigns again and again
    for _ in range(5):
        for _ in range(3 * CFG.election_ticks):
            net.handle(lonely, net.cores[lonely].tick())
    net.down.discard(lonely)
    net.tick(3 * CFG.election_ticks)
    assert net.leader() is leader and leader.status().ballot == old_ballot


def campaign(c: PaxosCore, granters=(2,)) -> None:
    """Ticks `c` until it runs a pre-vote, then grants it from `granters`."""
    prevotes = []
    for _ in range(2 * CFG.election_ticks):
        prevotes = sent(c.tick(), PreVote)
        if prevotes:
            break
    for g in granters:
        c.step(PreVoteReply(g, prevotes[0][1].round, True))
    assert c.status().role is Role.CANDIDATE


def test_new_leader_reproposes_highest_vballot_value_and_fills_holes_with_noops():
    c = core(1)
    campaign(c)
    b = c.status().ballot
    votes2 = {0: Vote(Ballot(1, 2), (b"low",)), 2: Vote(Ballot(1, 2), (b"two",))}
    r = c.step(Phase1b(2, b, 0, votes2))
    assert c.is_leader
    proposals = {m.slot: m.value for _, m in sent(r, Phase2a) if _ == 2}
    assert proposals == {0: (b"low",), 1: NOOP, 2: (b"two",)}
    assert all(v.ballot == b for v in r.votes.values())  # the leader votes for its own proposals


def test_highest_vballot_wins_over_lower_ones():
    c = core(1, ids=(1, 2, 3, 4, 5))
    campaign(c, granters=(2, 3))
    b = c.status().ballot
    c.step(Phase1b(2, b, 0, {0: Vote(Ballot(1, 2), (b"old",))}))
    r = c.step(Phase1b(3, b, 0, {0: Vote(Ballot(2, 3), (b"new",))}))
    assert c.is_leader
    assert {m.value for _, m in sent(r, Phase2a) if m.slot == 0} == {(b"new",)}


def test_leader_steps_down_at_once_on_a_higher_ballot():
    net = Net()
    leader = net.elect()
    other = next(rid for rid in net.cores if rid != leader.id)
    r = leader.step(
        Nack(other, leader.status().ballot, Ballot(leader.status().ballot.round + 1, other))
    )
    assert not leader.is_leader and leader.status().role is Role.FOLLOWER
    assert r.messages == [] or not sent(r, Phase2a)


def test_leader_steps_down_without_a_majority_check_quorum():
    net = Net()
    leader = net.elect()
    net.down |= {rid for rid in net.cores if rid != leader.id}
    for _ in range(2 * CFG.election_ticks + 1):
        net.handle(leader.id, leader.tick())
    assert not leader.is_leader


def test_propose_on_a_follower_raises_not_leader_with_the_hint():
    net = Net()
    leader = net.elect()
    follower = next(c for c in net.cores.values() if c is not leader)
    with pytest.raises(NotLeader) as exc:
        follower.propose([b"x"])
    assert exc.value.args[0] == leader.id


# --------------------------------------------------- batching and pipelining


def test_commands_beyond_the_window_are_batched_into_one_slot():
    leader = Net().elect()
    r1 = leader.propose([b"a"])
    r2 = leader.propose([b"b"])
    r3 = leader.propose([b"c", b"d", b"e"])  # window (2) full: these wait
    slots = [m.slot for r in (r1, r2) for _, m in sent(r, Phase2a)]
    assert len(set(slots)) == 2 and not sent(r3, Phase2a)
    assert len(leader._in_flight) == 2
    first = min(leader._in_flight)
    r = leader.step(Phase2b(2 if leader.id != 2 else 1, leader.status().ballot, first))
    batched = [m.value for _, m in sent(r, Phase2a)]
    assert (b"c", b"d", b"e") in batched


def test_everyone_applies_the_same_log_in_order():
    net = Net()
    leader = net.elect()
    for i in range(20):
        net.handle(leader.id, leader.propose([b"cmd%d" % i]))
    net.tick(4)
    logs = [[v for _, v in net.applied[i]] for i in net.cores]
    assert logs[0] == logs[1] == logs[2]
    cmds = [c for v in logs[0] for c in v]
    assert cmds == [b"cmd%d" % i for i in range(20)]
    assert [s for s, _ in net.applied[1]] == list(range(len(net.applied[1])))


def test_the_advertised_commit_index_waits_for_note_applied():
    """With `note_applied`, the commit index on Phase2a and Heartbeat is at
    most the driver's applied index (replica/driver.py, "Followers write
    the leader's effects"); the core's own commit index is not held back."""
    net = Net()
    leader = net.elect()
    for i in range(3):
        net.handle(leader.id, leader.propose([b"cmd%d" % i]))
    commit = leader.status().commit_index
    assert commit >= 3
    leader.note_applied(1)
    phase2a = sent(leader.propose([b"more"]), Phase2a)
    assert phase2a and {m.commit_index for _, m in phase2a} == {1}
    ready = leader.tick()
    for _ in range(CFG.heartbeat_ticks):
        ready.merge(leader.tick())
    beats = sent(ready, Heartbeat)
    assert beats and {m.commit_index for _, m in beats} == {1}
    assert leader.status().commit_index >= commit
    leader.note_applied(commit + 10)  # past the commit index: the commit index
    beats = []
    for _ in range(CFG.heartbeat_ticks):
        beats += sent(leader.tick(), Heartbeat)
    assert beats and {m.commit_index for _, m in beats} == {leader.status().commit_index}


# ------------------------------------------------------ learning and catch-up


def test_follower_learns_chosen_only_for_votes_of_the_leaders_ballot():
    f = core(2)
    f.step(Phase2a(1, Ballot(1, 1), 0, (b"stale",), 0))
    r = f.step(Heartbeat(3, Ballot(2, 3), 1, 1))  # slot 0 chosen in ballot (2,3)
    assert r.committed == []  # our vote is from another ballot: not trusted
    assert sent(r, CatchupRequest) == [(3, CatchupRequest(2, Ballot(2, 3), 0))]
    r = f.step(CatchupReply(3, Ballot(2, 3), {0: (b"real",)}, 1))
    assert r.committed == [(0, (b"real",))]
    assert r.chosen == {0: (b"real",)}  # persisted: our vote differs


def test_follower_applies_from_its_own_vote_in_the_leaders_ballot():
    f = core(2)
    f.step(Phase2a(1, Ballot(1, 1), 0, (b"x",), 0))
    r = f.step(Heartbeat(1, Ballot(1, 1), 1, 1))
    assert r.committed == [(0, (b"x",))] and r.chosen == {}
    assert sent(r, HeartbeatAck)


def test_lagging_replica_catches_up_after_rejoining():
    net = Net()
    leader = net.elect()
    lag = next(rid for rid in net.cores if rid != leader.id)
    net.down.add(lag)
    for i in range(30):
        net.handle(leader.id, leader.propose([b"w%d" % i]))
    net.down.discard(lag)
    net.tick(40)
    assert net.cores[lag].status().commit_index == leader.status().commit_index
    assert net.applied[lag] == net.applied[leader.id]


# ------------------------------------------------------------------- reads


def test_read_index_waits_for_a_majority_heartbeat_round():
    net = Net()
    leader = net.elect()
    r = leader.read_index(["r1"])
    assert r.reads == []
    hbs = sent(r, Heartbeat)
    assert hbs
    other = hbs[0][0]
    r = leader.step(
        HeartbeatAck(other, leader.status().ballot, hbs[0][1].round, leader.status().commit_index)
    )
    assert r.reads == ["r1"]


def test_pending_reads_fail_when_leadership_is_lost():
    net = Net()
    leader = net.elect()
    leader.read_index(["r1"])
    r = leader.step(
        Nack(
            2 if leader.id != 2 else 1,
            leader.status().ballot,
            Ballot(leader.status().ballot.round + 1, 3),
        )
    )
    assert r.failed_reads == ["r1"] and r.reads == []


def test_read_index_on_a_follower_raises():
    net = Net()
    net.elect()
    follower = next(c for c in net.cores.values() if not c.is_leader)
    with pytest.raises(NotLeader):
        follower.read_index(["r"])


def _token(seq: int) -> bytes:
    return b"c" * 16 + seq.to_bytes(8, "big")


def _followers(net: Net, leader: PaxosCore) -> list[PaxosCore]:
    return [c for c in net.cores.values() if c is not leader]


def test_a_vouched_read_is_confirmed_by_a_followers_vouch_without_a_heartbeat_round():
    net = Net()
    leader = net.elect()
    r = leader.read_index(["r1"], tokens=[_token(1)])
    assert r.reads == [] and sent(r, Heartbeat) == []
    follower = _followers(net, leader)[0]
    v = follower.vouch(leader.id, [_token(1)])
    ((dst, vouch),) = sent(v, ReadVouch)
    assert dst == leader.id and vouch.ballot == leader.status().ballot
    assert leader.step(vouch).reads == ["r1"]


def test_a_vouch_may_come_before_its_read():
    net = Net()
    leader = net.elect()
    follower = _followers(net, leader)[0]
    ((_, vouch),) = sent(follower.vouch(leader.id, [_token(2)]), ReadVouch)
    assert leader.step(vouch).reads == []
    assert leader.read_index(["r2"], tokens=[_token(2)]).reads == ["r2"]


def test_a_vouch_of_another_ballot_confirms_nothing():
    """A follower that promised a higher ballot (a new leader's) reports it;
    the old leader does not count it, and its next heartbeat round finds
    out that it was deposed."""
    net = Net()
    leader = net.elect()
    follower = _followers(net, leader)[0]
    follower.step(Phase1a(3, Ballot(leader.status().ballot.round + 1, 3), 0))
    leader.read_index(["r3"], tokens=[_token(3)])
    ((_, vouch),) = sent(follower.vouch(leader.id, [_token(3)]), ReadVouch)
    assert vouch.ballot > leader.status().ballot
    assert leader.step(vouch).reads == []


def test_a_vouched_read_without_its_vouches_goes_by_heartbeat_after_a_tick():
    net = Net()
    leader = net.elect()
    leader.read_index(["r4"], tokens=[_token(4)])
    hbs = []
    for _ in range(3):
        hbs = sent(leader.tick(), Heartbeat)
        if hbs:
            break
    assert hbs
    ack = HeartbeatAck(hbs[0][0], leader.status().ballot, hbs[0][1].round, 0)
    assert leader.step(ack).reads == ["r4"]
    follower = _followers(net, leader)[0]  # a late vouch changes nothing
    ((_, vouch),) = sent(follower.vouch(leader.id, [_token(4)]), ReadVouch)
    assert leader.step(vouch).reads == []


def test_vouched_reads_fail_when_leadership_is_lost():
    net = Net()
    leader = net.elect()
    leader.read_index(["r5", "r6"], tokens=[_token(5), None])
    other = _followers(net, leader)[0].id
    r = leader.step(Nack(other, leader.status().ballot, Ballot(9, other)))
    assert sorted(r.failed_reads) == ["r5", "r6"]


def test_five_replicas_need_two_vouches():
    net = Net(5)
    leader = net.elect()
    leader.read_index(["r7"], tokens=[_token(7)])
    first, second = _followers(net, leader)[:2]
    ((_, v1),) = sent(first.vouch(leader.id, [_token(7)]), ReadVouch)
    ((_, v2),) = sent(second.vouch(leader.id, [_token(7)]), ReadVouch)
    assert leader.step(v1).reads == []
    assert leader.step(v1).reads == []  # the same voucher twice is one vouch
    assert leader.step(v2).reads == ["r7"]


def test_a_vouch_goes_only_to_a_peer():
    net = Net()
    leader = net.elect()
    follower = _followers(net, leader)[0]
    assert sent(follower.vouch(follower.id, [_token(8)]), ReadVouch) == []
    assert sent(follower.vouch(99, [_token(8)]), ReadVouch) == []


def test_constructor_rejects_an_id_outside_the_cluster():
    with pytest.raises(ValueError):
        core(4)


def test_catchup_reply_is_capped_in_bytes_but_carries_at_least_one_entry():
    cfg = CoreConfig(catchup_bytes=250)
    big = (b"x" * 100,)
    durable = DurableState(votes={s: Vote(Ballot(1, 1), big) for s in range(10)})
    leader = core(1, durable=durable, applied=10, cfg=cfg)
    r = leader.step(CatchupRequest(2, Ballot(1, 1), 0))
    [(_, reply)] = sent(r, CatchupReply)
    assert sorted(reply.entries) == [0, 1, 2] and reply.commit_index == 10
    huge = core(
        1, durable=DurableState(votes={0: Vote(Ballot(1, 1), (b"y" * 1000,))}), applied=1, cfg=cfg
    )
    [(_, reply)] = sent(huge.step(CatchupRequest(2, Ballot(1, 1), 0)), CatchupReply)
    assert list(reply.entries) == [0]


# ------------------------------------------------------------ compaction


def _chosen_log(n: int) -> DurableState:
    return DurableState(votes={s: Vote(Ballot(1, 1), (b"v%d" % s,)) for s in range(n)})


def test_compact_forgets_below_the_point_and_tells_the_driver():
    a = core(1, durable=_chosen_log(10), applied=10)
    r = a.compact(6)
    assert r.compacted == 6 and r.must_persist()
    assert a.status().compacted == 6 and sorted(a._log) == [6, 7, 8, 9]
    assert sorted(a._votes) == [6, 7, 8, 9]
    assert a.compact(4).compacted is None  # never backwards
    assert a.compact(50).compacted == 10  # capped at what was handed out to apply


def test_restart_reads_only_the_log_above_the_compaction_point():
    durable = _chosen_log(10)
    durable.compacted = 7
    a = core(1, durable=durable, applied=10)
    assert sorted(a._log) == [7, 8, 9] and a.status().compacted == 7


def test_phase1b_carries_the_compaction_point():
    a = core(2, durable=_chosen_log(5), applied=5)
    a.compact(3)
    [(_, p1b)] = sent(a.step(Phase1a(1, Ballot(2, 1), 0)), Phase1b)
    assert p1b.compacted == 3 and sorted(p1b.votes) == [3, 4]


def test_a_candidate_behind_a_promisers_compaction_point_catches_up_instead_of_leading():
    c = core(1)  # commit index 0: knows nothing
    campaign(c)
    ballot = c.status().ballot
    r = c.step(Phase1b(2, ballot, 0, {}, 40))  # replica 2 compacted below 40
    assert not c.is_leader and c.status().role is Role.FOLLOWER
    assert not sent(r, Phase2a), "it must not fill slots it cannot see"
    [(dst, req)] = sent(r, CatchupRequest)
    assert dst == 2 and req.from_slot == 0


def test_a_candidate_at_or_past_every_compaction_point_leads():
    c = core(1, durable=_chosen_log(40), applied=40)
    campaign(c)
    c.step(Phase1b(2, c.status().ballot, 40, {}, 40))
    assert c.is_leader


def test_catchup_below_the_compaction_point_asks_for_a_snapshot():
    leader = core(1, durable=_chosen_log(30), applied=30)
    leader.compact(20)
    [(_, reply)] = sent(leader.step(CatchupRequest(2, Ballot(1, 1), 5)), CatchupReply)
    assert reply.entries == {} and reply.compacted == 20 and reply.commit_index == 30
    follower = core(2)
    r = follower.step(reply)
    assert r.install_from == 1 and r.committed == []


def test_installed_moves_the_log_past_the_snapshot():
    f = core(2)
    # Votes above the snapshot (from the leader's ballot) become chosen with it.
    f.step(Phase2a(1, Ballot(1, 1), 25, (b"after",), 0))
    r = f.installed(25)
    assert r.compacted == 25
    assert f.status().commit_index == 25 and f.status().compacted == 25
    r = f.step(Heartbeat(1, Ballot(1, 1), 26, 1))
    assert r.committed == [(25, (b"after",))]


def test_no_vote_below_the_compaction_point():
    f = core(2, durable=_chosen_log(10), applied=10)
    f.compact(8)
    r = f.step(Phase2a(1, Ballot(2, 1), 3, (b"old",), 10))
    assert r.votes == {} and not sent(r, Phase2b)


# --------------------------------------------------------- move-leader


def test_transfer_hands_over_to_a_caught_up_voter_with_a_higher_ballot():
    n = Net(3)
    leader = n.elect()
    n.handle(leader.id, leader.propose([b"a"]))
    target = next(i for i in (1, 2, 3) if i != leader.id)
    old_ballot = leader.status().ballot
    n.handle(leader.id, leader.transfer(target))
    # While handing over, new commands wait (no slot is started for them).
    r = leader.propose([b"b"])
    assert not sent(r, Phase2a)
    n.handle(leader.id, r)
    for _ in range(30):
        n.tick()
        if n.cores[target].is_leader:
            break
    assert n.cores[target].is_leader and not leader.is_leader
    assert n.cores[target].status().ballot > old_ballot
    # The new leader serves; the old one follows it.
    n.handle(target, n.cores[target].propose([b"c"]))
    n.tick(5)
    values = [v for _, v in n.applied[leader.id]]
    assert (b"a",) in values and (b"c",) in values


def test_transfer_refuses_a_non_voter_and_is_abandoned_if_the_target_is_silent():
    n = Net(3)
    leader = n.elect()
    with pytest.raises(ValueError):
        leader.transfer(9)
    target = next(i for i in (1, 2, 3) if i != leader.id)
    n.down.add(target)
    n.handle(leader.id, leader.transfer(target))
    n.tick(CFG.election_ticks + 2)
    assert leader.is_leader  # still leading: the hand-over was abandoned
    r = leader.propose([b"after"])
    assert sent(r, Phase2a)  # and proposing again


def _leader_at(commit: int) -> PaxosCore:
    """A leader (replica 1 of three) that knows slots below `commit` chosen."""
    c = core(1, durable=_chosen_log(commit), applied=commit)
    campaign(c)
    c.step(Phase1b(2, c.status().ballot, commit, {}, 0))
    assert c.is_leader and c.status().commit_index == commit
    return c


def test_a_leader_behind_a_follower_learns_the_chosen_values_from_it():
    leader = _leader_at(10)
    ballot = leader.status().ballot
    r = leader.step(HeartbeatAck(2, ballot, 0, 13))
    [(dst, req)] = sent(r, CatchupRequest)
    assert dst == 2 and req.from_slot == 10
    again = leader.step(HeartbeatAck(2, ballot, 0, 13))
    assert sent(again, CatchupRequest) == []  # one request in flight
    entries = {s: (b"chosen%d" % s,) for s in range(10, 13)}
    r = leader.step(CatchupReply(2, ballot, entries, 13, 0))
    assert leader.is_leader and leader.status().commit_index == 13
    assert [slot for slot, _ in r.committed] == [10, 11, 12]


def test_a_leader_behind_a_follower_s_compaction_point_steps_down_to_install():
    leader = _leader_at(10)
    ballot = leader.status().ballot
    leader.step(HeartbeatAck(3, ballot, 0, 14))
    r = leader.step(CatchupReply(3, ballot, {}, 14, 14))
    assert not leader.is_leader and r.install_from == 3


def test_a_leader_asks_again_when_the_catch_up_answer_is_lost():
    leader = _leader_at(10)
    ballot = leader.status().ballot
    assert sent(leader.step(HeartbeatAck(2, ballot, 0, 12)), CatchupRequest)
    for _ in range(CFG.retransmit_ticks + 1):
        leader.tick()
    assert sent(leader.step(HeartbeatAck(2, ballot, 0, 12)), CatchupRequest)
