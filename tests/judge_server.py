"""The tests' name for the package's OpenAI-compatible test server (selm.judge_server)."""

from selm.judge_server import JudgeServer, Reply, completion, error_reply, logprob_reply, text_reply  # noqa: F401
