"""Crafted checkpoints: a checkpoint directory is input from anyone, so loading one fails fast
with one clear line whatever its files claim. A config describing a huge model is compared with
the weights file's header before anything large is built; a text encoder folder never runs its
own code; a named pipe in place of a file is refused instead of blocking; a config missing a
field is an error naming it, not a default the weights were never trained with."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
from helpers import make_tiny_config

import envs
from agent import Agent
from envs.wrappers import TokenizeInstruction
from policies import CheckpointError, InstructionPolicy, PolicyConfig, TextConfig
from policies.text import default_model_path
from train.checkpoint import last_good_checkpoint, read_trainer_state, resume_training

# Under an address-space limit of argv[1] bytes (0: none), loads each checkpoint in argv[2:]
# and prints one JSON line for each: the seconds the load took and the CheckpointError's
# message (null when it loaded). Any other error ends the child with its traceback.
LOADER = """
import json, resource, sys, time
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from policies import CheckpointError, InstructionPolicy
for checkpoint in sys.argv[2:]:
    start, message = time.monotonic(), None
    try:
        InstructionPolicy.from_pretrained(checkpoint)
    except CheckpointError as error:
        message = str(error)
    print(json.dumps({"seconds": time.monotonic() - start, "error": message}), flush=True)
"""

TWO_GB = 2 * 2**30


def load_in_child(
    *checkpoints: Path, limit: int = TWO_GB, timeout: float = 90, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Each checkpoint loaded in one fresh interpreter, "y" piped on stdin (a prompt, if any,
    is answered yes); loads that run past ``timeout`` fail the test."""
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(limit), *map(str, checkpoints)],
        input="y\n",
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def tiny_checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    return InstructionPolicy(make_tiny_config()).save_pretrained(directory)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "checkpoint")


def edit_config(checkpoint: Path, section: str, field: str, value: object) -> None:
    path = checkpoint / "config.json"
    payload = json.loads(path.read_text())
    if value is None:
        del payload["policy"][section][field]
    else:
        payload["policy"][section][field] = value
    path.write_text(json.dumps(payload))


# -- a config describing a huge model ---------------------------------------------------------


def test_a_crafted_config_fails_in_seconds_under_a_2gb_limit(tmp_path: Path) -> None:
    """projection_dim 8192 once grew the process to 3.7 GB, num_blocks 1e6 ran for an hour, both
    before noticing that the weights file (a few KB) does not match."""
    crafted = []
    for field, value in (("projection_dim", 8192), ("num_blocks", 1_000_000)):
        crafted.append(tiny_checkpoint(tmp_path / field))
        edit_config(crafted[-1], "fusion_kwargs", field, value)
    for load in load_in_child(*crafted):
        message = load["error"]
        assert message and "does not match" in message and "\n" not in message, load
        assert load["seconds"] < 10, load


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(checkpoint: Path) -> None:
    edit_config(checkpoint, "fusion_kwargs", "projection_dim", 32)
    with pytest.raises(CheckpointError, match=r"does not match .*null_instruction.*\(32,\).*\(16,\)"):
        InstructionPolicy.from_pretrained(checkpoint)


def test_an_honest_checkpoint_still_loads_with_its_outputs(checkpoint: Path) -> None:
    model = InstructionPolicy(make_tiny_config())
    model.load_state_dict(InstructionPolicy.from_pretrained(checkpoint).state_dict())
    loaded = InstructionPolicy.from_pretrained(checkpoint).eval()
    frames = torch.randint(0, 256, (1, 3, 16, 16, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames, ["go"]).logits, model.eval()(frames, ["go"]).logits)
    assert all(p.device.type == "cpu" for p in loaded.parameters())


# -- a text encoder folder asking to run its own code ----------------------------------------


def custom_code_folder(root: Path, marker: Path) -> Path:
    """A model folder whose config maps AutoConfig/AutoModel to its own python file, which
    writes ``marker`` when it is imported; its tokenizer is the packaged MiniLM one."""
    folder = root / "text_model"
    folder.mkdir()
    source = Path(default_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    config = json.loads((source / "config.json").read_text())
    config["model_type"] = "custom-bert"
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModel": "custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig, BertModel\n"
        "class CustomConfig(BertConfig):\n    model_type = 'custom-bert'\n"
        "class CustomModel(BertModel):\n    config_class = CustomConfig\n"
    )
    return folder


def test_a_text_folder_with_its_own_code_is_refused_even_when_y_is_piped(
    checkpoint: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "custom_code_ran"
    folder = custom_code_folder(tmp_path, marker)
    path = checkpoint / "config.json"
    payload = json.loads(path.read_text())
    payload["policy"]["text"] = {**payload["policy"]["text"], "encoder": "hf", "path": str(folder)}
    path.write_text(json.dumps(payload))
    try:
        [load] = load_in_child(checkpoint, limit=0, env={"HF_HOME": str(tmp_path / "hf_home")})
    finally:  # whatever the load said, the folder's code must not have run
        assert not marker.exists(), "the folder's own code ran"
    message = load["error"]
    assert message and "auto_map" in message and str(folder) in message and "\n" not in message, load


def test_the_text_encoder_loads_local_files_with_remote_code_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second guard, for what a folder check cannot see: transformers itself is told never
    to run a folder's code and never to reach the network."""
    import transformers

    seen: list[dict[str, object]] = []
    for auto in (transformers.AutoTokenizer, transformers.AutoModel):
        original = auto.from_pretrained

        def spy(*args: object, _original=original, **kwargs: object) -> object:
            seen.append(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    from policies.text import PretrainedTextEncoder

    PretrainedTextEncoder(TextConfig(encoder="minilm"))
    assert len(seen) == 2
    assert all(kwargs.get("trust_remote_code") is False for kwargs in seen)
    assert all(kwargs.get("local_files_only") is True for kwargs in seen)


# -- named pipes in place of files ------------------------------------------------------------


def test_a_named_pipe_in_place_of_a_checkpoint_file_is_refused(tmp_path: Path) -> None:
    """config.json, model.safetensors, or a file of the text encoder's folder: reading a named
    pipe waits for a writer that never comes."""
    names = ["config.json", "model.safetensors"]
    piped = []
    for name in names:
        piped.append(tiny_checkpoint(tmp_path / name))
        (piped[-1] / name).unlink()
        os.mkfifo(piped[-1] / name)
    piped.append(checkpoint_with_a_piped_text_folder(tmp_path))
    names.append("tokenizer_config.json")
    for name, load in zip(names, load_in_child(*piped, limit=0, timeout=60), strict=True):
        message = load["error"]
        assert message and f"{name} is a named pipe, not a regular file" in message, load


def checkpoint_with_a_piped_text_folder(tmp_path: Path) -> Path:
    checkpoint = tiny_checkpoint(tmp_path / "text_folder")
    folder = tmp_path / "text_model"
    folder.mkdir()
    source = Path(default_model_path())
    for entry in source.iterdir():
        if entry.is_file():
            (folder / entry.name).symlink_to(entry)
    (folder / "tokenizer_config.json").unlink()
    os.mkfifo(folder / "tokenizer_config.json")
    path = checkpoint / "config.json"
    payload = json.loads(path.read_text())
    payload["policy"]["text"] = {**payload["policy"]["text"], "encoder": "hf", "path": str(folder)}
    path.write_text(json.dumps(payload))
    return checkpoint


def test_a_named_pipe_as_trainer_state_is_refused_on_resume(tmp_path: Path) -> None:
    from train.config import RunConfig

    run = RunConfig(policy=make_tiny_config())
    torch.manual_seed(0)
    policy = InstructionPolicy(run.policy)
    optimizer = torch.optim.AdamW(policy.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    directory = tmp_path / "checkpoint"
    policy.save_pretrained(directory)
    (directory / "run.json").write_text(json.dumps(run.to_dict()))
    os.mkfifo(directory / "trainer.pt")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=r"trainer.pt is a named pipe, not a regular file"):
        resume_training(str(directory), run, policy, optimizer, scheduler, "cpu")
    assert time.monotonic() - start < 10


def test_the_last_good_checkpoint_phrase_does_not_block_on_a_named_pipe(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    os.mkfifo(directory / "config.json")
    assert last_good_checkpoint(directory) == "the last good checkpoint: none was written"


# -- a config missing a field -----------------------------------------------------------------


def test_a_checkpoint_config_missing_a_field_names_it(checkpoint: Path) -> None:
    """The weights were trained with 2 heads; today's default is 4: a missing num_heads is an
    error, not the default."""
    assert PolicyConfig().fusion_kwargs.num_heads != make_tiny_config().fusion_kwargs.num_heads
    edit_config(checkpoint, "fusion_kwargs", "num_heads", None)
    with pytest.raises(CheckpointError, match=r"config.json.*fusion_kwargs\.num_heads is missing"):
        InstructionPolicy.from_pretrained(checkpoint)


def test_a_checkpoint_from_before_the_cell_encoder_still_loads(checkpoint: Path, tmp_path: Path) -> None:
    """Fields that did not exist when a checkpoint was written keep their legacy meaning: a
    checkpoint without vision.encoder (hence without the cell encoder's fields, positions or
    pooling) is the IMPALA stack it was built as."""
    torch.manual_seed(0)
    old = make_tiny_config().replace(**{"vision.encoder": "impala", "vision.position_embedding": False})
    directory = InstructionPolicy(old).save_pretrained(tmp_path / "old")
    for field in ("encoder", "cell_size", "cell_blocks", "position_embedding", "token_pooling"):
        edit_config(directory, "vision", field, None)
    loaded = InstructionPolicy.from_pretrained(directory)
    assert loaded.config.vision.encoder == "impala" and loaded.config.vision.token_pooling == "average"


def test_a_checkpoint_from_before_the_history_stride_reads_every_frame(
    checkpoint: Path, tmp_path: Path
) -> None:
    """A checkpoint written before ``fusion_kwargs.history_stride`` existed read every frame of
    its window: it loads with a stride of 1 (the shipped agents are such checkpoints)."""
    edit_config(checkpoint, "fusion_kwargs", "history_stride", None)
    assert "history_stride" not in (checkpoint / "config.json").read_text()
    assert InstructionPolicy.from_pretrained(checkpoint).config.fusion_kwargs.history_stride == 1


def test_user_configs_may_still_leave_fields_to_their_defaults() -> None:
    assert PolicyConfig.from_dict({"fusion_kwargs": {"projection_dim": 16}}).fusion_kwargs.num_heads == 4


# -- a very long instruction ------------------------------------------------------------------

HUGE = "collect wood " * 1000  # 13,000 characters


def test_the_agent_echoes_only_the_start_of_a_long_instruction() -> None:
    config = make_tiny_config().replace(**{"text.max_tokens": 8})
    agent = Agent(InstructionPolicy(config))
    with pytest.raises(ValueError) as raised:
        agent.reset(HUGE)
    message = str(raised.value)
    assert len(message) < 400 and f"({len(HUGE)} characters)" in message, message
    assert "collect wood collect wood" in message  # the start is still there to recognise it
    with pytest.warns(UserWarning) as caught:
        agent.reset(HUGE, truncate=True)
    assert len(str(caught[0].message)) < 400


def test_the_tokenize_wrapper_echoes_only_the_start_of_a_long_instruction() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = TokenizeInstruction(gym.make(envs.CRAFTER_ID), max_tokens=8)
    with pytest.raises(ValueError) as raised:
        env.encode(HUGE)
    message = str(raised.value)
    assert len(message) < 400 and f"({len(HUGE)} characters)" in message, message
    env.close()


def test_rl_refuses_named_pipes_in_a_checkpoint_without_blocking(tmp_path: Path) -> None:
    """``rl --resume`` reads trainer.pt and ``rl --init`` reads config.json: a named pipe in
    either place is named at once instead of blocking the run forever."""
    from train.rl.run import check_init_matches_env

    directory = tmp_path / "checkpoint"
    directory.mkdir()
    os.mkfifo(directory / "trainer.pt")
    os.mkfifo(directory / "config.json")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=r"trainer.pt is a named pipe"):
        read_trainer_state(directory, "cpu")  # what `rl --resume` reads first
    with pytest.raises(CheckpointError, match=r"--init .*config.json is a named pipe"):
        check_init_matches_env(str(directory), None, "instructcraft/Crafter-Instruct-v0", "--init")
    assert time.monotonic() - start < 10
