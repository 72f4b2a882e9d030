"""A real single-node SLURM queue for the cluster tests (see ../shared/SLURM.md).

Starts munged, slurmctld and slurmd in a temporary folder when the SLURM
packages are installed and the tests run as root; otherwise the tests that
need it are skipped with the reason. Nothing is written outside the folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

BINARIES = ("slurmctld", "slurmd", "munged", "sinfo", "sbatch", "squeue", "scancel", "munge")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_running() -> bool:
    return subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def slurm_queue(tmp_path_factory):
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(
            f"no SLURM here (missing {missing or 'root'}): apt-get install slurmctld slurmd "
            f"slurm-client munge, as root, to run the SLURM tests"
        )
    root = tmp_path_factory.mktemp("slurm")
    root.chmod(0o755)
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir()
    started_munge = None
    if not _munge_running():
        key = Path("/etc/munge/munge.key")
        if not key.is_file() or key.stat().st_size == 0:
            subprocess.run(["mungekey", "--create", "--force"], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        started_munge = Path("/run/munge/munged.pid")
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=stemdasktest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=60
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [
        subprocess.Popen(
            [f"/usr/sbin/{d}", "-D", "-f", str(conf)],
            env=env,
            stdout=open(root / "log" / f"{d}.out", "w"),
            stderr=subprocess.STDOUT,
        )
        for d in ("slurmctld", "slurmd")
    ]
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # sbatch from dask-jobqueue inherits it
    try:
        for _ in range(120):
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            if state.stdout.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.skip(f"SLURM did not come up: {state.stdout} {state.stderr}")
        yield {"conf": conf, "root": root, "env": env}
    finally:
        subprocess.run(["scancel", "-u", "root"], env=env, capture_output=True)
        for _ in range(40):
            queue = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
            if not queue.stdout.strip():
                break
            time.sleep(0.5)
        for proc in daemons:
            proc.send_signal(signal.SIGTERM)
        for proc in daemons:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if started_munge is not None and started_munge.is_file():
            os.kill(int(started_munge.read_text().strip()), signal.SIGTERM)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
