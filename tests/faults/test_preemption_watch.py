"""align.train.preemption.Watch: the first signal is a stop request, a duplicate is ignored, a
later second one acts as without the watch, and the old handlers come back."""

import os
import signal
import time

import pytest

from align.train import preemption


def test_first_signal_requests_a_stop_at_the_current_step():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.Watch() as watch:
        assert watch.stop_step(3, 10) is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert watch.signum == signal.SIGTERM and watch.signal_name() == "SIGTERM"
        assert watch.stop_step(4, 10) == 4
        assert watch.stop_step(5, 10) == 4  # the decision stands
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_duplicate_is_ignored_and_a_later_second_sigint_interrupts():
    with preemption.Watch() as watch:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the same signal delivered twice
        assert watch.signum == signal.SIGINT
        time.sleep(preemption.DUPLICATE_S + 0.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler runs at the next bytecode boundary
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_preempted_exit_code_is_the_shells():
    assert preemption.Preempted("x", signal.SIGTERM).exit_code == 143
    assert preemption.Preempted("x", signal.SIGINT).exit_code == 130
