"""Background training jobs: `python -m cxrdemo train` in its own process, one at a time.

A job is a run folder under `runs_dir()` named `<timestamp>-<arch>-<task>` holding `job.json`
(pid, command, arguments, start time), `train.log` (the process's stdout and stderr) and what the
trainer writes itself (`status.json`, `metrics.jsonl`, and on success the model and its card; see
`cxrdemo.runlog`). Everything is read back from disk, so the job list survives an app restart and
is the same for every session.

The trainer only writes `status.json` while it is alive, so a process killed by SIGKILL or the OOM
killer leaves "running" behind; `list_jobs` checks the pid (and the process's start time, so a reused
pid does not count) and reports such a job as failed.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cxrdemo.fileio import atomic_write_json, read_json
from cxrdemo.paths import REPO_ROOT, data_dir, runs_dir
from cxrdemo.runlog import RunLog, read_metrics
from cxrdemo.training.command import train_command

JOB_FILE = "job.json"
LOG_FILE = "train.log"
LOCK_FILE = ".job.lock"
DEVICES = ("auto", "cpu", "cuda")
MAX_EPOCHS = 200
MIN_SUBSET = 8  # fewer images cannot give both classes in train and validation
LOCK_TIMEOUT_S = 30.0
DIED = "process ended unexpectedly"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Popen objects of jobs this process started: polling them reaps the child, so a finished or killed
# job does not stay a zombie of the app (which would look alive to os.kill(pid, 0)).
_children: dict[int, subprocess.Popen] = {}


class JobError(RuntimeError):
    """A job that cannot be started, found or cancelled; the message is one line for the user."""


@dataclass
class Job:
    id: str
    run_dir: Path
    arch: str
    task: str
    epochs: int
    subset: int | None
    device: str
    state: str  # running | finished | failed
    started: float  # Unix time
    pid: int | None
    metrics: list[dict] = field(default_factory=list)  # records of metrics.jsonl
    card: dict | None = None  # card.json of a finished run
    error: str | None = None  # why a failed job failed

    @property
    def epoch_records(self) -> list[dict]:
        return [m for m in self.metrics if m.get("event") == "epoch"]

    @property
    def epochs_done(self) -> int:
        records = self.epoch_records
        return int(records[-1]["epoch"]) if records else 0

    @property
    def best_val_auroc(self) -> float | None:
        """The best validation AUROC of any epoch so far (the trainer keeps that checkpoint)."""
        values = [r["val_auroc"] for r in self.epoch_records if r.get("val_auroc") is not None]
        return max(values) if values else None

    @property
    def model_id(self) -> str | None:
        return self.card.get("id") if self.card else None

    def last_log_lines(self, n: int = 20) -> list[str]:
        """The last `n` lines of `train.log` (tqdm's carriage-return redraws shown as their final state)."""
        path = self.run_dir / LOG_FILE
        try:
            with open(path, "rb") as fh:  # binary: split on "\n" only, not on tqdm's "\r"
                tail = deque(fh, maxlen=n)
        except OSError:
            return []
        return [line.decode("utf-8", "replace").rstrip("\r\n").split("\r")[-1] for line in tail]


def _runs_root() -> Path:
    return runs_dir().expanduser().resolve()


@contextmanager
def _start_lock(root: Path):
    """An exclusive flock on `runs/.job.lock`: concurrent starts (threads or processes) take turns.

    flock rather than an O_EXCL marker file because the kernel drops it when the holder dies, so a
    crash while starting can never leave a stale lock behind.
    """
    fd = os.open(root / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise JobError("another training job is being started; try again in a moment") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _validate(arch: str, task: str, epochs: int, subset: int | None, device: str) -> None:
    from cxrdemo.models.architectures import list_models
    from cxrdemo.tasks import TASKS

    if arch not in list_models():
        raise JobError(f"unknown architecture {arch!r}; choose one of {', '.join(list_models())}")
    if task not in TASKS:
        raise JobError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS:
        raise JobError(f"epochs must be a whole number from 1 to {MAX_EPOCHS}, not {epochs!r}")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < MIN_SUBSET):
        raise JobError(f"subset must be empty (all images) or at least {MIN_SUBSET}, not {subset!r}")
    if device not in DEVICES:
        raise JobError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")


def start_job(
    arch: str,
    task: str = "binary",
    epochs: int = 10,
    subset: int | None = None,
    device: str = "auto",
    data: str | Path | None = None,
) -> Job:
    """Start training `arch` on `task` in a background process; refuses while another job runs."""
    _validate(arch, task, epochs, subset, device)
    root = _runs_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test.{os.getpid()}.{threading.get_ident()}"  # unique per concurrent caller
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise JobError(f"cannot write to the runs folder {root}: {err.strerror or err}") from None
    with _start_lock(root):
        running = running_job()
        if running is not None:
            raise JobError(
                f"a training job is already running ({running.id}, pid {running.pid}); wait for it or cancel it"
            )
        run_dir = _new_run_dir(root, arch, task)
        args = {
            "arch": arch,
            "task": task,
            "epochs": epochs,
            "subset": subset,
            "device": device,
            "data": str(data_dir(data)),
        }
        options = ["--epochs", str(epochs), "--device", device]
        if subset is not None:
            options += ["--subset", str(subset)]
        command = train_command(arch, task, data=args["data"], out=run_dir, extra=options)
        proc = None
        try:
            with open(run_dir / LOG_FILE, "wb") as log:
                # A new session: the job outlives the app (a restart does not kill it) and cancel can
                # signal its whole process group.
                proc = subprocess.Popen(
                    command,
                    cwd=REPO_ROOT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            _children[proc.pid] = proc
            atomic_write_json(
                run_dir / JOB_FILE,
                {
                    "id": run_dir.name,
                    "pid": proc.pid,
                    "pid_start": _proc_start(proc.pid),
                    "command": command,
                    "args": args,
                    "started": time.time(),
                },
            )
        except OSError as err:
            if proc is not None:  # without job.json nobody could see or stop it: do not leave it running
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise JobError(f"cannot start the training job: {err.strerror or err}") from None
    return _read_job(run_dir)


def _new_run_dir(root: Path, arch: str, task: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 100):
        name = f"{stamp}-{arch}-{task}" + (f"-{n}" if n > 1 else "")
        try:
            (root / name).mkdir()
            return root / name
        except FileExistsError:
            continue
        except OSError as err:
            raise JobError(f"cannot create a run folder in {root}: {err.strerror or err}") from None
    raise JobError("cannot find a free run folder name")


def list_jobs() -> list[Job]:
    """Every job under `runs_dir()`, newest first (folders without `job.json`, e.g. CLI runs, are skipped)."""
    root = _runs_root()
    if not root.is_dir():
        return []
    jobs = []
    for path in root.iterdir():
        if path.is_dir() and not path.is_symlink() and (path / JOB_FILE).is_file():
            job = _read_job(path)
            if job is not None:
                jobs.append(job)
    return sorted(jobs, key=lambda j: (j.started, j.id), reverse=True)


def running_job() -> Job | None:
    """The job that is running now, if any."""
    return next((job for job in list_jobs() if job.state == "running"), None)


def get_job(job_id: str) -> Job:
    """The job named `job_id` (the name of its run folder)."""
    job = _read_job(_job_dir(job_id))
    if job is None:
        raise JobError(f"job {job_id!r} has an unreadable job.json")
    return job


def cancel_job(job_id: str, timeout_s: float = 10.0) -> Job:
    """Stop a running job: SIGTERM to its process group, SIGKILL after `timeout_s`; status -> failed/cancelled."""
    job = get_job(job_id)
    if job.state != "running" or job.pid is None:
        raise JobError(f"job {job_id} is not running ({job.state})")
    try:
        os.killpg(job.pid, signal.SIGTERM)  # start_new_session made the pid its group id
        deadline = time.monotonic() + timeout_s
        while _alive(job.pid, _pid_start(job.run_dir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(job.pid, _pid_start(job.run_dir)):
            os.killpg(job.pid, signal.SIGKILL)
            while _alive(job.pid, _pid_start(job.run_dir)):
                time.sleep(0.1)
    except ProcessLookupError:
        pass  # it ended on its own in the meantime
    status = _status(job.run_dir)
    if status.get("state") not in ("finished", "failed"):
        RunLog(job.run_dir).status("failed", error="cancelled")
    return get_job(job_id)


def _job_dir(job_id: str) -> Path:
    """The run folder of `job_id`, accepted only as the plain name of an existing job folder."""
    root = _runs_root()
    if not isinstance(job_id, str) or not _ID_PATTERN.match(job_id):
        raise JobError(f"invalid job id {job_id!r}")
    names = {p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink()} if root.is_dir() else set()
    if job_id not in names or not (root / job_id / JOB_FILE).is_file():
        raise JobError(f"no job {job_id!r} in {root}")
    return root / job_id


def _status(run_dir: Path) -> dict:
    try:
        status = read_json(run_dir / "status.json")
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def _pid_start(run_dir: Path) -> int | None:
    try:
        return read_json(run_dir / JOB_FILE).get("pid_start")
    except (OSError, ValueError, AttributeError):
        return None


def _read_job(run_dir: Path) -> Job | None:
    try:
        meta = read_json(run_dir / JOB_FILE)
        args = meta["args"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    status = _status(run_dir)
    pid = meta.get("pid")
    state = status.get("state", "running")
    error = status.get("error")
    if state == "running" and not _alive(pid, meta.get("pid_start")):
        state, error = "failed", DIED + _exit_note(pid)
    card = None
    if state == "finished":
        try:
            card = read_json(run_dir / "card.json")
        except (OSError, ValueError):
            state, error = "failed", "finished without a readable card.json"
    return Job(
        id=run_dir.name,
        run_dir=run_dir,
        arch=args.get("arch", "?"),
        task=args.get("task", "?"),
        epochs=int(args.get("epochs") or 0),
        subset=args.get("subset"),
        device=args.get("device", "?"),
        state=state,
        started=float(meta.get("started") or 0.0),
        pid=pid,
        metrics=read_metrics(run_dir),
        card=card,
        error=error,
    )


def _exit_note(pid: int | None) -> str:
    """How a child of this process ended, when we can know it."""
    proc = _children.get(pid) if pid is not None else None
    if proc is None:
        return ""
    try:
        # Already known dead; a SIGKILLed leader shows as a zombie a moment before its other
        # threads have exited and waitpid can reap it, so wait briefly rather than poll once.
        code = proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return ""
    return f" (killed by signal {-code})" if code < 0 else f" (exit code {code})"


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces and ')'
    return int(fields[19])


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def _alive(pid: int | None, expected_start: int | None) -> bool:
    """Whether job process `pid` still runs: not reaped, not a zombie, and not a reused pid."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:  # our own child: poll() also reaps it
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if Path("/proc").is_dir():
        state = _proc_state(pid)
        if state is None or state in ("Z", "X"):
            return False
        if expected_start is not None and _proc_start(pid) != expected_start:
            return False
    return True


def compare_metrics(job: Job, directory: Path | None = None) -> list[dict]:
    """Validation metrics of a finished job's model beside the installed model with the same id.

    Rows `{"metric", "this run", "installed"}`; "installed" is None where no such model is installed.
    Values are read from the two cards' `metrics.val`, never recomputed.
    """
    from cxrdemo.models.registry import list_cards

    if job.card is None:
        return []
    installed = list_cards(directory).get(job.card.get("id", ""), {})
    run_val = job.card.get("metrics", {}).get("val", {})
    installed_val = installed.get("metrics", {}).get("val", {})
    rows = []
    for key, value in run_val.items():
        ours = _scalar(value)
        if ours is None:
            continue
        rows.append({"metric": key, "this run": ours, "installed": _scalar(installed_val.get(key))})
    return rows


def _scalar(value) -> float | None:
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def installed_from(model_id: str | None, directory: Path | None = None) -> str | None:
    """The job id the installed model `model_id` was promoted from (None if shipped or absent)."""
    from cxrdemo.models.registry import list_cards

    if not model_id:
        return None
    return list_cards(directory).get(model_id, {}).get("promoted_from")
