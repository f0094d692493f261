"""Options of the simulation tier.

pytest tests/sim                       # the CI set: 1,000 seeds x (3, 5) replicas
pytest tests/sim --seed 417            # replay one seed exactly (both sizes)
pytest tests/sim --sim-seeds 20000 --sim-events 5000 -n 2   # a longer hunt
"""


def pytest_addoption(parser):
    group = parser.getgroup("simulation")
    group.addoption("--seed", type=int, default=None, help="replay exactly this simulation seed")
    group.addoption(
        "--sim-seeds",
        type=int,
        default=1000,
        help="how many seeds to simulate per cluster size (default 1000)",
    )
    group.addoption(
        "--sim-events", type=int, default=2000, help="events per simulation (default 2000)"
    )
    group.addoption(
        "--sim-first-seed", type=int, default=0, help="first seed of the range (default 0)"
    )


def pytest_generate_tests(metafunc):
    if "sim_seed" in metafunc.fixturenames:
        opt = metafunc.config.option
        if opt.seed is not None:
            seeds = [opt.seed]
        else:
            seeds = range(opt.sim_first_seed, opt.sim_first_seed + opt.sim_seeds)
        metafunc.parametrize("sim_seed", seeds, ids=lambda s: f"seed{s}")
