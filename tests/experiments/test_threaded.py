import io
import os
import signal
import threading
import time

import pytest

from t5x_like.experiments import threaded


def test_lines_printed_from_threads_come_out_whole_and_labelled():
    stream = io.StringIO()
    lines = threaded.LabelledLines(stream)

    def speak(label):
        lines.label(label)
        for i in range(200):
            lines.write(f"{label} line")
            lines.write(f" {i}\n")

    workers = [threading.Thread(target=speak, args=(label,)) for label in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out = stream.getvalue().splitlines()
    assert len(out) == 400
    assert all(line in {f"[{x}] {x} line {i}" for x in "ab" for i in range(200)} for line in out)


def test_a_job_starts_after_the_job_it_names_and_results_come_back_by_label():
    finished = []

    def job(label, seconds):
        def run(stop):
            time.sleep(seconds)
            finished.append(label)
            return {"label": label}
        return run

    jobs = [threaded.Job("source", "source", job("source", 0.3)),
            threaded.Job("other", "other", job("other", 0.0)),
            threaded.Job("adapted", "adapted", job("adapted", 0.0), after="source")]
    results = threaded.run_jobs(jobs, workers=2)
    assert results == {label: {"label": label} for label in ("source", "other", "adapted")}
    assert finished.index("source") < finished.index("adapted")


def test_sigterm_stops_every_running_job_and_starts_no_other(capsys):
    # As in a grid: two cells running when SIGTERM arrives each see the shared stop request
    # (run_cell saves, then raises GridStopped); the queued third never starts.
    seen_stop, started = [], []
    previous_handler = signal.getsignal(signal.SIGTERM)

    def running(label):
        def run(stop):
            started.append(label)
            deadline = time.time() + 30
            while not stop.requested and time.time() < deadline:
                time.sleep(0.01)
            seen_stop.append(label)
            raise threaded.GridStopped(f"{label} stopped by a signal", stop.signal_number)
        return run

    jobs = [threaded.Job(label, label, running(label)) for label in ("a", "b", "c")]
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(threaded.GridStopped) as stopped:
        threaded.run_jobs(jobs, workers=2)
    assert stopped.value.signal_number == signal.SIGTERM
    assert sorted(seen_stop) == sorted(started) == ["a", "b"]
    assert signal.getsignal(signal.SIGTERM) == previous_handler
    assert "[a] a started" in capsys.readouterr().out


def test_a_job_to_start_after_one_that_is_not_before_it_is_one_clear_error():
    jobs = [threaded.Job("a", "a", lambda stop: {}, after="b"), threaded.Job("b", "b", lambda stop: {})]
    with pytest.raises(ValueError, match="job a is to start after 'b', which is not a job before it"):
        threaded.run_jobs(jobs, workers=2)
