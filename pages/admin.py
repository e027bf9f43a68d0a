"""Admin: sign in, start a background training job, watch it, then promote or roll back its model.

Training never runs in this script: `cxrdemo.training.jobs` starts `python -m cxrdemo train` as its own
process, and this page only reads what that process writes. Access is checked on every run of the
page (hiding a page in the navigation is not access control).
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from cxrdemo.app import auth, charts
from cxrdemo.app.ui import page_frame
from cxrdemo.models import registry
from cxrdemo.models.architectures import list_models
from cxrdemo.tasks import TASKS
from cxrdemo.training import jobs

ADMIN_KEY = "admin"
FLASH_KEY = "admin_flash"  # a message that survives the rerun after starting a job
MODEL_FLASH_KEY = "admin_model_flash"  # outcome of the last promote / roll back
EPOCH_CHOICES = [1, 2, 3, 5, 10, 20, 30, 50, 100, 200]
SUBSET_CHOICES = [0, 24, 50, 100, 200, 500, 1000, 2000]  # 0 = every training image
POLL_S = 2


def configured_password() -> str | None:
    """`st.secrets` raises when no secrets file exists; that just means "use the environment"."""
    try:
        secrets = {auth.SECRET_KEY: st.secrets[auth.SECRET_KEY]} if auth.SECRET_KEY in st.secrets else {}
    except (FileNotFoundError, KeyError):
        secrets = None
    return auth.admin_password(secrets)


def login_ui(expected: str) -> None:
    """The password form; sets session_state["admin"] on success."""
    lockout = auth.Lockout()
    locked = lockout.is_locked()
    with st.form("admin_login", clear_on_submit=True):  # the password is not kept in the session
        given = st.text_input("Admin password", type="password", key="admin_password")
        submitted = st.form_submit_button("Sign in", key="admin_sign_in", disabled=locked > 0)
    if locked > 0:
        st.error(f"Too many wrong passwords. Try again in {_duration(locked)}.")
        return
    if not submitted:
        return
    try:
        if auth.check_password(given, expected):
            lockout.reset()
            st.session_state[ADMIN_KEY] = True
            st.rerun()
        remaining = lockout.register_failure()
    except OSError as err:  # fail closed: without a record of attempts there is no rate limit
        st.error(f"Cannot record sign-in attempts ({err.strerror or err}); sign-in is unavailable.")
        return
    if remaining > 0:
        st.error(f"Too many wrong passwords. Try again in {_duration(remaining)}.")
    else:
        st.error("Wrong password.")


def start_ui(running: jobs.Job | None) -> None:
    """Choices for a new job; the job itself runs in a separate process."""
    st.subheader("Start a training job")
    with st.form("admin_start_job"):
        cols = st.columns(5)
        arch = cols[0].selectbox(
            "Architecture",
            list_models(),
            key="admin_arch",
            index=list_models().index("cnn4") if "cnn4" in list_models() else 0,
        )
        task = cols[1].selectbox("Task", list(TASKS), key="admin_task")
        epochs = cols[2].selectbox("Epochs", EPOCH_CHOICES, index=EPOCH_CHOICES.index(10), key="admin_epochs")
        subset = cols[3].selectbox(
            "Training images",
            SUBSET_CHOICES,
            key="admin_subset",
            format_func=lambda n: "all" if n == 0 else str(n),
            help="Train on a stratified subset (quick trials); 'all' uses the whole split.",
        )
        device = cols[4].selectbox("Device", list(jobs.DEVICES), key="admin_device")
        submitted = st.form_submit_button(
            "Start training", key="admin_start_training", type="primary", disabled=running is not None
        )
    if running is not None:
        st.caption(f"Job {running.id} is running; one job runs at a time.")
    if submitted:
        try:
            job = jobs.start_job(arch, task, int(epochs), int(subset) or None, device)
        except jobs.JobError as err:
            st.error(str(err))
        else:
            st.session_state[FLASH_KEY] = f"Started job {job.id}."
            st.rerun()  # redraw the form with its button disabled while the job runs
    if FLASH_KEY in st.session_state:
        st.success(st.session_state.pop(FLASH_KEY))


def jobs_ui(pred, watching: str | None) -> None:
    """Progress of the running job `watching` (if any), then the history; polled while a job runs."""
    if watching is not None:
        try:
            job = jobs.get_job(watching)
        except jobs.JobError:  # its folder was removed meanwhile
            st.rerun()
        if job.state != "running":
            st.rerun()  # it ended: a full run re-enables the form and stops the polling
        progress_ui(job)
    history_ui(pred)


def progress_ui(job: jobs.Job) -> None:
    st.subheader(f"Running: {job.id}")
    done = job.epochs_done
    st.progress(done / max(job.epochs, 1), text=f"Epoch {done} of {job.epochs}")
    records = job.epoch_records
    if records:
        last = records[-1]
        cols = st.columns(4)
        cols[0].metric("Train loss", _fmt(last.get("train_loss")))
        cols[1].metric("Val AUROC", _fmt(last.get("val_auroc")))
        cols[2].metric("Images/s", _fmt(last.get("images_per_s"), 1))
        cols[3].metric("ETA", _duration(last.get("eta_s") or 0.0))
        left, right = st.columns(2)
        left.plotly_chart(
            charts.training_curve_figure(records, {"train_loss": "train", "val_loss": "validation"}, "Loss"),
            key="admin_loss_curve",
        )
        right.plotly_chart(
            charts.training_curve_figure(records, {"val_auroc": "validation"}, "Validation AUROC"),
            key="admin_auroc_curve",
        )
    else:
        st.info("Loading data and building the model…")
    with st.expander("Log"):
        st.code("\n".join(job.last_log_lines(20)) or "(empty)", language=None)
    if st.button("Cancel job", key="admin_cancel_job"):
        try:
            jobs.cancel_job(job.id)
        except jobs.JobError as err:
            st.error(str(err))
        else:
            st.rerun()


def history_ui(pred) -> None:
    """Every job, newest first, and the chosen one's outcome with promote / roll back."""
    st.subheader("Job history")
    history = jobs.list_jobs()
    if not history:
        st.info("No training jobs yet.")
        return
    st.dataframe(
        history_table(history),
        hide_index=True,
        column_config={"val AUROC": st.column_config.NumberColumn(format="%.3f")},
    )
    # Options are the bare ids (a label that changed with the job's state would lose the selection), and
    # there is no key, so a new job (new options) resets the choice to the newest.
    chosen = st.selectbox("Job", [job.id for job in history])
    job = next(j for j in history if j.id == chosen)
    st.markdown(f"**{job.id}**: {job.state}")
    if job.state == "finished":
        finished_ui(job, pred)
    elif job.state == "failed":
        st.error(f"Job {job.id} failed: {job.error}")
        st.code("\n".join(job.last_log_lines(20)) or "(no log output)", language=None)
    else:
        st.info("This job is still running; its progress is shown above.")


def history_table(history: list[jobs.Job]) -> pd.DataFrame:
    rows = []
    for job in history:
        rows.append(
            {
                "job": job.id,
                "state": job.state,
                "epochs": f"{job.epochs_done}/{job.epochs}",
                "val AUROC": job.best_val_auroc,
                "error": job.error or "",
                "images": str(job.subset or "all"),
                "device": job.device,
                "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(job.started)),
            }
        )
    return pd.DataFrame(rows)


def finished_ui(job: jobs.Job, pred) -> None:
    model_id = job.model_id
    active = jobs.installed_from(model_id) == job.id
    st.markdown(f"Model **{model_id}** from job {job.id}" + (" — **installed now**." if active else "."))
    rows = jobs.compare_metrics(job)
    if rows:
        st.dataframe(pd.DataFrame(rows).rename(columns={"installed": f"installed {model_id}"}), hide_index=True)
    left, right = st.columns(2)
    # Callbacks run before the script, so the buttons and the table below are drawn in the new state.
    left.button(
        "Promote",
        key="admin_promote",
        type="primary",
        disabled=active,
        on_click=promote,
        args=(job, pred),
        help="Install this model in place of the current one (the current one is kept for roll back).",
    )
    right.button(
        "Roll back",
        key="admin_rollback",
        disabled=not registry.can_roll_back(model_id),
        on_click=roll_back,
        args=(model_id, pred),
        help="Restore the version the last promotion of this model replaced.",
    )
    kind, message = st.session_state.pop(MODEL_FLASH_KEY, (None, None))
    if kind == "success":
        st.success(message)
    elif kind == "error":
        st.error(message)


def promote(job: jobs.Job, pred) -> None:
    try:
        card = registry.promote(job.run_dir)
        pred.get(card["id"])  # the shared predictor reloads it now, because the card changed on disk
    except registry.ModelLoadError as err:
        st.session_state[MODEL_FLASH_KEY] = ("error", str(err))
    else:
        message = f"Promoted {card['id']} from job {job.id}; the app uses it now."
        st.session_state[MODEL_FLASH_KEY] = ("success", message)


def roll_back(model_id: str, pred) -> None:
    try:
        card = registry.rollback(model_id)
        pred.get(card["id"])
    except registry.ModelLoadError as err:
        st.session_state[MODEL_FLASH_KEY] = ("error", str(err))
    else:
        source = card.get("promoted_from") or "the shipped version"
        st.session_state[MODEL_FLASH_KEY] = ("success", f"Rolled back {card['id']} to the version from {source}.")


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


pred = page_frame("Admin")
password = configured_password()
if password is None:
    st.info(
        f"Admin is disabled: set `{auth.SECRET_KEY}` in `.streamlit/secrets.toml` "
        f"or the {auth.PASSWORD_ENV} environment variable."
    )
elif not st.session_state.get(ADMIN_KEY):
    login_ui(password)
else:
    if st.sidebar.button("Sign out", key="admin_logout"):
        st.session_state[ADMIN_KEY] = False
        st.rerun()
    running = jobs.running_job()
    start_ui(running)
    # A fragment that reruns every few seconds only while a job runs (so run_every is chosen here).
    st.fragment(jobs_ui, run_every=POLL_S if running else None)(pred, running.id if running else None)
