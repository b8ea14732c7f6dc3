"""A table of bad inputs through the real command line: each gives one `error:` line naming the
culprit, exit status 2, no traceback (issue 19). The cases run as subprocesses, two at a time."""

import concurrent.futures
import json
import os
import struct
import textwrap

import pytest

from helpers import run_cli

pytestmark = pytest.mark.slow

DEMO = "--config=configs/demo.py"
GPT = "--config=configs/demo_ar.py"


def _recipe(tmp, body):
  path = tmp / f"recipe_{abs(hash(body))}.py"
  path.write_text(textwrap.dedent(body))
  return str(path)


def _bad_safetensors(tmp, header: bytes, name="weights.safetensors"):
  path = tmp / name
  path.write_bytes(struct.pack("<Q", len(header)) + header)
  return str(path)


RAISING = """
def get_config():
  return undefined_name
"""
TYPO = """
from gigatok_jax import config
def get_config():
  c = config.tokenizer_config()
  c.data.source = "demo"
  c.model.enc_widht = 512
  return c
"""
SYNTAX = "def get_config(:\n  pass\n"


# (name, argv builder (tmp_path -> argv), text the error line must contain)
CASES = [
    # command line
    ("unknown key", lambda t: [DEMO, "--mode=summary", "--config.optim.lrr=1"],
     ["optim.lrr", "did you mean 'optim.lr'"]),
    ("unknown group", lambda t: [DEMO, "--mode=summary", "--config.optimizer.lr=1"],
     ["optimizer.lr", "did you mean 'optim'"]),
    ("unreadable float", lambda t: [DEMO, "--mode=summary", "--config.optim.lr=abc"],
     ["optim.lr", "'abc'"]),
    ("float for an int", lambda t: [DEMO, "--mode=summary", "--config.total_steps=1.5"],
     ["total_steps", "int"]),
    ("override of a group", lambda t: [DEMO, "--mode=summary", "--config.model=3"],
     ["model", "group"]),
    ("override without value", lambda t: [DEMO, "--mode=summary", "--config.optim.lr"],
     ["optim.lr", "needs a value"]),
    ("unknown flag", lambda t: [DEMO, "--mode=summary", "--bogus=1"], ["bogus"]),
    ("unknown mode", lambda t: [DEMO, "--mode=sumary"], ["--mode", "sumary"]),
    ("mode of the other kind", lambda t: [DEMO, "--mode=sample", f"--workdir={t}/w"],
     ["--mode=sample", "tokenizer recipe"]),
    ("no --config", lambda t: ["--mode=summary"], ["--config"]),
    ("override before --config", lambda t: ["--config.optim.lr=1"], ["--config"]),
    ("empty --config", lambda t: ["--config=", "--mode=summary"], ["--config"]),
    # recipes
    ("missing recipe", lambda t: ["--config=configs/nope.py", "--mode=summary"],
     ["configs/nope.py", "not found"]),
    ("unknown variant", lambda t: [DEMO + ":huge", "--mode=summary"], ["huge", "tiny"]),
    ("recipe syntax error", lambda t: [f"--config={_recipe(t, SYNTAX)}",
                                       "--mode=summary"], ["syntax error", ".py:1"]),
    ("recipe raising", lambda t: [f"--config={_recipe(t, RAISING)}", "--mode=summary"],
     ["NameError", ".py:3", "undefined_name"]),
    ("recipe without get_config", lambda t: [f"--config={_recipe(t, 'X = 1')}", "--mode=summary"],
     ["get_config"]),
    ("recipe key typo", lambda t: [f"--config={_recipe(t, TYPO)}", "--mode=summary"],
     ["model.enc_widht", "did you mean 'model.enc_width'"]),
    # workdir
    ("workdir is a file", lambda t: [DEMO, f"--workdir={_bad_safetensors(t, b'x', 'afile')}",
                                     "--config.total_steps=1"], ["--workdir", "is a file"]),
    ("workdir not writable", lambda t: [DEMO, "--workdir=/proc/gigatok_run",
                                        "--config.total_steps=1"], ["--workdir", "/proc"]),
    ("train without workdir", lambda t: [DEMO, "--config.total_steps=1"], ["--workdir"]),
    # values (config checks, before anything compiles)
    ("negative batch", lambda t: [DEMO, "--mode=summary", "--config.global_batch_size=-8"],
     ["global_batch_size"]),
    ("heads do not divide width", lambda t: [DEMO, "--mode=summary", "--config.model.enc_heads=7"],
     ["enc_heads=7"]),
    ("codebook of one", lambda t: [DEMO, "--mode=summary", "--config.model.codebook_size=1"],
     ["model.codebook_size"]),
    ("norm groups", lambda t: [DEMO, "--mode=summary", "--config.model.cnn_norm_groups=5"],
     ["5 GroupNorm groups"]),
    ("query init", lambda t: [DEMO, "--mode=summary", "--config.model.dec_query_init=foo"],
     ["model.dec_query_init", "foo"]),
    ("model kind", lambda t: [DEMO, "--mode=summary", "--config.model.kind=3d"], ["model.kind"]),
    ("inference dtype", lambda t: [GPT, "--mode=summary", "--config.inference_dtype=fp16"],
     ["inference_dtype", "fp16"]),
    ("gpt attention core", lambda t: [GPT, "--mode=summary", "--config.model.attention=flash"],
     ["model.attention", "flash"]),
    ("image size", lambda t: [DEMO, "--mode=summary", "--config.data.image_size=100"],
     ["data.image_size"]),
    ("data source", lambda t: [DEMO, f"--workdir={t}/w", "--config.data.source=nope"],
     ["data.source", "nope"]),
    ("negative lr", lambda t: [DEMO, f"--workdir={t}/w", "--config.optim.lr=-1.0"], ["optim.lr"]),
    ("ema decay", lambda t: [DEMO, f"--workdir={t}/w", "--config.optim.ema_decay=1.5"],
     ["optim.ema_decay"]),
    ("cnn lr scale", lambda t: [DEMO, f"--workdir={t}/w", "--config.optim.cnn_lr_scale=0.0"],
     ["optim.cnn_lr_scale"]),
    ("aux end", lambda t: [DEMO, f"--workdir={t}/w", "--config.loss.aux_loss_end=-1"],
     ["loss.aux_loss_end"]),
    ("batch vs devices", lambda t: [DEMO, f"--workdir={t}/w", "--config.global_batch_size=3",
                                    "--config.mesh.data=2"], ["mesh"]),
    ("process id", lambda t: [DEMO, f"--workdir={t}/w", "--config.distributed.num_processes=2",
                              "--config.distributed.process_id=5"], ["distributed"]),
    # files the config points at
    ("missing train data", lambda t: [DEMO, f"--workdir={t}/w", "--config.data.source=array_record",
                                      f"--config.data.train_path={t}/nothing"],
     ["data.train_path"]),
    ("missing lpips weights", lambda t: [DEMO + ":teachers", f"--workdir={t}/w",
                                         f"--config.teachers.lpips_path={t}/lpips.safetensors",
                                         f"--config.teachers.dinov2_path={t}/d.safetensors"],
     ["teachers.", "not found"]),
    ("lpips file not safetensors", lambda t: [
        DEMO + ":teachers", f"--workdir={t}/w",
        f"--config.teachers.lpips_path={_bad_safetensors(t, b'{not json', 'l.safetensors')}",
        f"--config.teachers.dinov2_path={_bad_safetensors(t, b'{not json', 'd.safetensors')}"],
     [".safetensors"]),
    ("init_from nowhere", lambda t: [DEMO, f"--workdir={t}/w", f"--config.init_from={t}/none"],
     ["init_from"]),
    ("reconstruct without checkpoint", lambda t: [DEMO, "--mode=reconstruct", f"--workdir={t}/w"],
     ["no checkpoint"]),
    ("reconstruct input missing", lambda t: [
        DEMO, "--mode=reconstruct", f"--workdir={t}/w",
        f"--config.data.reconstruct_input={t}/no_images"], ["data.reconstruct_input"]),
    ("eval inception missing", lambda t: [
        DEMO, "--mode=eval", f"--workdir={t}/w",
        f"--config.eval.inception_path={t}/inception.safetensors"], ["eval.inception_path"]),
    ("eval protocol unknown", lambda t: [DEMO, "--mode=eval", f"--workdir={t}/w",
                                         "--config.eval.protocol=tf1"], ["eval.protocol", "adm"]),
    ("discriminator kind unknown", lambda t: [DEMO, f"--workdir={t}/w",
                                              "--config.discriminator.kind=stylegan"],
     ["discriminator.kind", "dinodisc"]),
    ("gpt without tokenizer", lambda t: [GPT, "--mode=sample", f"--workdir={t}/g",
                                         "--config.tokenizer.workdir="], ["tokenizer.workdir"]),
    ("gpt tokenizer not a run", lambda t: [GPT, "--mode=sample", f"--workdir={t}/g",
                                           f"--config.tokenizer.workdir={t}"],
     ["tokenizer.workdir"]),
    ("gpt codes missing", lambda t: [GPT, f"--workdir={t}/g", f"--config.data.codes_path={t}/c"],
     ["data.codes_path"]),
    ("top_k", lambda t: [GPT, "--mode=summary", "--config.sample.top_k=-1"], ["sample.top_k"]),
]


def _run(case, tmp_path):
  name, argv, needles = case
  workdir = tmp_path / name.replace(" ", "_")
  workdir.mkdir()
  return run_cli(*argv(workdir), timeout=300)


def test_at_least_40_cases():
  assert len(CASES) >= 40
  assert len({name for name, _, _ in CASES}) == len(CASES)


def test_every_bad_input_is_one_line_and_exit_2(tmp_path):
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    procs = list(pool.map(lambda case: _run(case, tmp_path), CASES))
  failures = []
  for (name, _, needles), proc in zip(CASES, procs):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    problems = []
    if proc.returncode != 2:
      problems.append(f"exit {proc.returncode}")
    if "Traceback" in proc.stderr:
      problems.append("traceback")
    if len(errors) != 1:
      problems.append(f"{len(errors)} error lines")
    elif not all(n in errors[0] for n in needles):
      problems.append(f"missing {[n for n in needles if n not in errors[0]]}")
    if problems:
      tail = proc.stderr.strip().splitlines()[-3:]
      failures.append(f"{name}: {', '.join(problems)}: {json.dumps(tail)[:600]}")
  assert not failures, "\n".join(failures)
