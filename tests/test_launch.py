"""Launch scripts (launch/): they parse, and they run the entry point the way the README says.

`gcloud` and `srun` are replaced by recorders on PATH, so the tests check the exact command each
host would run without a cloud or a cluster.
"""

import os
import stat
import subprocess

import pytest

from helpers import REPO

SCRIPTS = sorted(os.listdir(os.path.join(REPO, "launch")))


@pytest.mark.parametrize("name", [n for n in SCRIPTS if n.endswith((".sh", ".sbatch"))])
def test_scripts_parse(name):
  subprocess.run(["bash", "-n", os.path.join(REPO, "launch", name)], check=True)


def _recorder(tmp_path, tool: str, status: int = 0) -> str:
  """A fake `tool` on PATH that appends its arguments to <tmp_path>/<tool>.args, exits `status`."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  script = bin_dir / tool
  script.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" >> "{tmp_path}/{tool}.args"\n'
                    f'exit {status}\n')
  script.chmod(script.stat().st_mode | stat.S_IEXEC)
  return str(bin_dir)


def _run(tmp_path, tool, argv, status=0, env=None):
  (tmp_path / f"{tool}.args").unlink(missing_ok=True)
  env = dict(os.environ, **(env or {}))
  env["PATH"] = _recorder(tmp_path, tool, status) + os.pathsep + env["PATH"]
  proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  args_file = tmp_path / f"{tool}.args"
  return proc, (args_file.read_text().splitlines() if args_file.exists() else None)


def test_tpu_pod_runs_the_same_command_on_every_worker(tmp_path):
  proc, args = _run(tmp_path, "gcloud", [
      "bash", "launch/tpu_pod.sh", "run", "my-v5p", "us-east5-a", "configs/tokenizer_bl.py",
      "gs://bucket/bl", "--config.mesh.fsdp=-1", "--config.mesh.data=1"])
  assert proc.returncode == 0, proc.stderr
  assert args[:6] == ["compute", "tpus", "tpu-vm", "ssh", "my-v5p", "--zone=us-east5-a"]
  assert "--worker=all" in args
  command = args[-1].split("--command=", 1)[-1]
  assert ("python -m gigatok_jax.main --config=configs/tokenizer_bl.py --workdir=gs://bucket/bl "
          "--noprogress --config.mesh.fsdp=-1 --config.mesh.data=1") in command
  proc, args = _run(tmp_path, "gcloud", ["bash", "launch/tpu_pod.sh", "fly", "t", "z"])
  assert proc.returncode == 2 and "setup or run" in proc.stderr


def test_slurm_script_runs_one_srun_per_job(tmp_path):
  proc, args = _run(tmp_path, "srun", ["bash", "launch/slurm_gpu.sbatch", "configs/gpt_b.py",
                                       "/shared/gpt", "--config.global_batch_size=512"])
  assert proc.returncode == 0, proc.stderr
  assert args == ["--kill-on-bad-exit=1", "python", "-m", "gigatok_jax.main",
                  "--config=configs/gpt_b.py", "--workdir=/shared/gpt", "--noprogress",
                  "--config.global_batch_size=512"]
  with open(os.path.join(REPO, "launch", "slurm_gpu.sbatch")) as f:
    text = f.read()
  assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --signal=TERM@120" in text
  assert "#SBATCH --requeue" in text


def test_slurm_script_requeues_a_preempted_job(tmp_path):
  """The trainer exits 75 after SIGTERM (checkpoint saved): the script requeues the job and passes
  the status on; any other failure is passed on without a requeue."""
  _recorder(tmp_path, "scontrol")
  argv = ["bash", "launch/slurm_gpu.sbatch", "configs/gpt_b.py", "/shared/gpt"]
  proc, _ = _run(tmp_path, "srun", argv, status=75, env={"SLURM_JOB_ID": "4242"})
  assert proc.returncode == 75
  assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
  (tmp_path / "scontrol.args").unlink()
  proc, _ = _run(tmp_path, "srun", argv, status=2, env={"SLURM_JOB_ID": "4242"})
  assert proc.returncode == 2 and not (tmp_path / "scontrol.args").exists()


def test_tpu_pod_reruns_a_preempted_command(tmp_path):
  argv = ["bash", "launch/tpu_pod.sh", "run", "my-v5p", "us-east5-a", "configs/tokenizer_bl.py",
          "gs://bucket/bl"]
  proc, args = _run(tmp_path, "gcloud", argv, status=75, env={"RESUMES": "2"})
  assert proc.returncode == 75
  assert sum(a == "--worker=all" for a in args) == 3    # the first run and two resumes
  assert proc.stderr.count("preempted (exit 75): resuming") == 2

