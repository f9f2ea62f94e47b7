"""run_all: job order kept, at most `parallel` in flight, and the rest cancelled when one fails."""

import pytest

from la_edge.faces.evaluation.runner import run_all


class _Req:
    def __init__(self, log, i, fail):
        self.log, self.i, self.fail, self.cancelled = log, i, fail, False

    def result(self):
        self.log.append(("result", self.i))
        if self.fail:
            raise RuntimeError(f"job {self.i} failed")
        return self.i * 10

    def cancel(self):
        self.cancelled = True


class _Aligner:
    """Stands in for the Aligner's submit(); run_all's own logic is what is tested."""

    def __init__(self, fail_at=None):
        self.log, self.reqs, self.fail_at = [], [], fail_at

    def submit(self, i):
        self.log.append(("submit", i))
        self.reqs.append(_Req(self.log, i, i == self.fail_at))
        return self.reqs[-1]


def test_results_in_job_order_with_bounded_flight():
    la = _Aligner()
    seen = []
    assert run_all(la, [{"i": i} for i in range(7)], 3, lambda j, r: seen.append((j, r))) == [i * 10 for i in range(7)]
    assert seen == [(i, i * 10) for i in range(7)]
    flight = 0
    for kind, _ in la.log:
        flight += 1 if kind == "submit" else -1
        assert flight <= 3


def test_a_failure_cancels_what_is_in_flight():
    la = _Aligner(fail_at=2)
    with pytest.raises(RuntimeError, match="job 2"):
        run_all(la, [{"i": i} for i in range(8)], 4)
    assert [r.cancelled for r in la.reqs if r.i > 2] == [True] * (len(la.reqs) - 3)
    assert len(la.reqs) < 8  # nothing more was submitted after the failure
