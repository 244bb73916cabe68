"""The zombie fence (streams/fence.py): a stalled worker writes nothing until reassigned."""

from streams.fence import StallFence


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_worker_that_keeps_running_may_write():
    clock = Clock()
    fence = StallFence(10, clock)
    for _ in range(30):
        clock.now += 1
        fence.tick()
        assert fence.may_write()


def test_a_write_right_after_a_freeze_is_refused_until_partitions_are_assigned():
    clock = Clock()
    fence = StallFence(10, clock)
    fence.tick()
    clock.now += 15  # SIGSTOP past the session timeout; the write runs before any tick
    assert not fence.may_write()
    fence.tick()  # the tick task catching up does not reopen it
    clock.now += 1
    assert not fence.may_write()
    fence.partitions_assigned()
    assert fence.may_write() and fence.refused == 2


def test_the_tick_task_noticing_the_freeze_first_closes_it_too():
    clock = Clock()
    fence = StallFence(10, clock)
    clock.now += 30
    fence.tick()
    assert not fence.may_write()
