"""Leases in the deterministic simulation (simulator.py): its clients also
grant 1 s leases, put keys of their own with them and keep them alive, so
the leader's expiry commands (replica/driver.py) run through drops,
partitions, crashes, leader changes and snapshot installs. Every invariant
of the simulator still holds, and at the end every live replica holds the
same data and the same leases; across the seeds, leases do expire through
the log.
"""

from __future__ import annotations

import random

import pytest

from kvstore.protocol import LEASE_EXPIRY_TAG, Op, Request
from tests.fault.history import Kind
from tests.sim import simulator
from tests.sim.simulator import InvariantViolation, SimClient, Simulation

SEEDS = {3: range(24), 5: range(40)}
"""Five replicas crash and elect more often, and a new leader gives every
lease a full TTL of grace: about one seed in eight lets a lease expire
through the log (5-7 in the first 60 seeds, depending on the code under
test), so they run more seeds to see some."""
EVENTS = 5000  # about 1.5 s of each replica's clock: 1 s leases expire


class LeasingClient(SimClient):
    """A simulated client that now and then sends a lease request instead
    (recorded in the history as a put to a key no one reads)."""

    lease = 0  # the last lease this client asked for

    def start(self) -> None:
        rng = self.sim.rng
        if rng.random() >= 0.08:
            super().start()
            return
        self.seq += 1
        req = self._lease_request(rng)
        self.kind = Kind.PUT
        self.handle = self.sim.history.invoke(self.index, Kind.PUT, b"lease!%d" % self.index, b"")
        self.frame = simulator.encode_request(req)
        self.send()

    def _lease_request(self, rng: random.Random) -> Request:
        pick = rng.random()
        if self.lease == 0 or pick < 0.25:
            self.lease = (self.index + 1) << 32 | self.seq  # never reused
            return Request(Op.LEASE_GRANT, self.cid, self.seq, lease=self.lease, ttl=1)
        if pick < 0.8:
            key = b"lease/%d/%d" % (self.index, self.seq % 3)
            return Request(Op.PUT, self.cid, self.seq, key, b"x", lease=self.lease)
        return Request(Op.LEASE_KEEPALIVE, self.cid, self.seq, lease=self.lease)


def _run(seed: int, replicas: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Simulation, int]:
    monkeypatch.setattr(simulator, "SimClient", LeasingClient)
    sim = Simulation(seed, replicas, wipes=seed % 5 == 1)
    try:
        sim.run(EVENTS)
    except InvariantViolation as exc:
        pytest.fail(f"{exc}\nseed {seed}, {replicas} replicas", pytrace=False)
    live = sim.members_live()
    assert not any(c.busy for c in sim.clients), "every client operation completed"
    assert len({tuple(n.applied) for n in live}) == 1
    assert len({n.driver.sm.checksum() for n in live}) == 1
    assert len({tuple(n.driver.sm.lease_ids(0, 1000)[0]) for n in live}) == 1
    expiries = sum(1 for value in live[0].applied for cmd in value if cmd[:1] == LEASE_EXPIRY_TAG)
    return sim, expiries


@pytest.mark.parametrize("replicas", [3, 5])
def test_leases_in_the_simulation(replicas: int, monkeypatch: pytest.MonkeyPatch) -> None:
    expiries = 0
    grants = 0
    for seed in SEEDS[replicas]:
        sim, found = _run(seed, replicas, monkeypatch)
        expiries += found
        grants += sum(c.lease != 0 for c in sim.clients)
    assert grants > 0, "the clients granted leases"
    assert expiries > 0, "leases expired through the log"
