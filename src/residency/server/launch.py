"""The contract between ``residency run`` and the deployed ServerApp (kept import-light).

The CLI must not import torch just to launch a job, so these names live apart from the
ServerApp that uses them.
"""

JOB_KEY = "job"
"""Run-config key holding the validated job as JSON, exactly the bytes its launcher signed."""

JOB_LAUNCHER_KEY = "job-launcher"
"""Run-config key holding the launcher's public key (64 hex)."""

JOB_SIGNATURE_KEY = "job-signature"
"""Run-config key holding the launcher's Ed25519 signature over the job's bytes (hex)."""

RUNS_DIR_ENV = "RESIDENCY_RUNS_DIR"
"""Environment variable naming the coordinator's folder of run outputs."""

ADMITTED_ENV = "RESIDENCY_ADMITTED_NODES"
"""Environment variable naming the coordinator's record of which country each key speaks for."""

LEDGER_DIR_ENV = "RESIDENCY_LEDGER_DIR"
"""Environment variable naming the coordinator's ledger folder (ledger.jsonl, updates/)."""

LEDGER_KEY_ENV = "RESIDENCY_LEDGER_KEY"
"""Environment variable naming the Ed25519 key the coordinator signs ledger entries with."""

DATA_DIR_ENV = "RESIDENCY_DATA_DIR"
"""Environment variable naming the only folder a launched job may read files from."""

SHUTDOWN_MARKER = ".coordinator-stopping"
"""Written in the runs folder while the coordinator itself shuts down (Ctrl-C, SIGTERM, its
supervisor gone), removed when it starts: a ServerApp stopped then leaves its run to resume,
where one stopped by ``runs stop`` ends it."""

COORDINATOR_SETTINGS_ENV = "RESIDENCY_COORDINATOR_SETTINGS"
"""Environment variable naming ``coordinator.toml``, read again at each launch (trusted keys)."""
