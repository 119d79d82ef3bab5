"""generate and chat through the CLI, and the engine's user errors."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from desv_export.cli import main
from desv_export.errors import UserError
from tests.engine import libraries as L


@pytest.fixture(scope="module")
def q4(build_root, tiny_llama_dir):
    wd = L.weight_dir(build_root, tiny_llama_dir, "q4f16_1")
    return wd, L.library(build_root, wd)


def _run(args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def test_generate_prints_only_text_and_stats_on_stderr(q4):
    from desv_export.engine.generation import Generator
    from desv_export.engine.sampler import SamplingConfig

    wd, lib = q4
    args = ["generate", wd, "--model-lib", lib, "--prompt", "the market", "--max-new-tokens", 12,
            "--temperature", 0]
    plain = _run(args)
    assert plain.exit_code == 0, plain.output
    with_stats = _run(args + ["--stats"])
    assert with_stats.exit_code == 0
    assert with_stats.stdout == plain.stdout  # stats never reach stdout
    assert "prefill:" in with_stats.stderr and "decode:" in with_stats.stderr and "tok/s" in with_stats.stderr
    # stdout is exactly the greedy continuation the engine computes
    gen = Generator.open(wd, lib, "cpu")
    expected = gen.complete("the market", max_new_tokens=12, sampling=SamplingConfig()).text
    assert plain.stdout == expected + "\n"


def test_sampling_is_seeded(q4):
    wd, lib = q4
    args = ["generate", wd, "--model-lib", lib, "--prompt", "stocks", "--max-new-tokens", 16,
            "--temperature", 1.5, "--top-p", 0.95, "--seed"]
    a, b, c = _run(args + [1]), _run(args + [1]), _run(args + [2])
    assert a.exit_code == 0 and a.stdout == b.stdout
    assert a.stdout != c.stdout
    # --stop cuts the same sampled text before the first occurrence of the stop string
    text = a.stdout[:-1]
    stop = next(text[k:k + 2] for k in range(1, len(text) - 1) if text[k:k + 2].strip() == text[k:k + 2])
    cut = _run(args + [1, "--stop", "never-there", "--stop", stop])
    assert cut.exit_code == 0 and cut.stdout == text[:text.find(stop)] + "\n"


def test_chat_two_turns_keeps_the_conversation_in_the_kv_cache(q4):
    from desv_export.engine.generation import Generator
    from desv_export.engine.sampler import SamplingConfig

    wd, lib = q4
    script = "the company said\nshares rose\n/stats\n/reset\n/stats\n/exit\nnever read\n"
    result = _run(["chat", wd, "--model-lib", lib, "--max-new-tokens", 8], input=script)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("You can use the following special commands")  # help first, like mlc_llm
    assert out.count("prefill:") == 1 and "decode:" in out  # /stats after two turns
    assert "RESET CHAT SUCCESSFULLY" in out and "no statistics yet" in out

    # The same two turns through the engine: turn 2 only prefills the new tokens, and its
    # reply equals a from-scratch run on the full two-turn prompt (the cache holds turn 1).
    gen = Generator.open(wd, lib, "cpu")
    gen.reset()
    first = gen.chat("the company said", max_new_tokens=8, sampling=SamplingConfig())
    cached_before = len(gen.cached)
    second = gen.chat("shares rose", max_new_tokens=8, sampling=SamplingConfig())
    prefix = gen.conversation.template.get("system_prefix_token_ids") or []
    ids = prefix + gen.tokenizer.encode(_two_turn_prompt(gen, first.text))
    # Turn 2 prefilled only what the cache did not already hold, not the whole conversation.
    assert cached_before > 0 and second.stats.prompt_tokens < len(ids)
    fresh = Generator.open(wd, lib, "cpu")
    fresh.reset()
    again = fresh.generate_ids(ids, max_new_tokens=8, sampling=SamplingConfig())
    assert again.token_ids == second.token_ids
    assert first.text in out and second.text in out


def test_chat_set_changes_the_next_turns_and_a_mistyped_command_is_not_a_turn(q4):
    from desv_export.engine.generation import Generator
    from desv_export.engine.sampler import SamplingConfig

    wd, lib = q4
    gen = Generator.open(wd, lib, "cpu")
    gen.reset()
    # Seeded sampling (greedy, the tiny model repeats one token): each turn reseeds, so a turn
    # of the CLI chat samples these tokens until max_tokens or the stop string cuts it.
    sampling = SamplingConfig(temperature=1.0, seed=0)
    ref = gen.chat("the company said", max_new_tokens=8, sampling=sampling)
    assert len(ref.token_ids) == 8, ref
    stop = next(ref.text[k:k + 2] for k in range(1, len(ref.text) - 1)
                if ref.text[k:k + 2].strip() == ref.text[k:k + 2] and not set(ref.text[k:k + 2]) & set(";,"))
    script = (f"/stat\n/stats\n/set max_tokens=3\nthe company said\n/stats\n/reset\n"
              f"/set max_tokens=8;stop={stop}\nthe company said\n/set top_p=2\n/exit\n")
    result = _run(["chat", wd, "--model-lib", lib, "--temperature", 1.0, "--seed", 0], input=script)
    assert result.exit_code == 0, result.output
    assert "unknown command /stat: /help lists the commands" in result.stderr
    before, after = result.stdout.split("RESET CHAT SUCCESSFULLY")
    assert "no statistics yet" in before  # the typo did not become a turn
    assert "max_tokens=3;" in before and gen.tokenizer.decode(ref.token_ids[:3]) + "\n" in before
    assert "decode: " in before and "(3 tokens)" in before.split("decode: ")[1]
    assert f"max_tokens=8;stop={stop}" in after
    assert ref.text[:ref.text.find(stop)] + "\n" in after and ref.text not in after  # cut at the stop string
    assert "Error: /set top_p must be in (0, 1]" in result.stderr


def test_set_rejects_what_it_cannot_apply():
    from desv_export.commands.chat import TurnSettings, apply_set
    from desv_export.engine.sampler import SamplingConfig

    base = TurnSettings(SamplingConfig(), 16)
    assert apply_set(base, "temperature=0.7; seed=3;stop=a,b,") == TurnSettings(
        SamplingConfig(temperature=0.7, seed=3), 16, ("a", "b"))
    assert apply_set(base, "") == base
    for bad, named in [("top_k=3", "top_k"), ("temperature", "temperature"), ("seed=1.5", "seed=1.5"),
                       ("max_tokens=0", "max_tokens"), ("repetition_penalty=-1", "repetition_penalty"),
                       ("seed=-2", "seed")]:
        with pytest.raises(UserError, match=named):
            apply_set(base, bad)


def _two_turn_prompt(gen, first_reply: str) -> str:
    from desv_export.engine.conversation import Conversation

    conv = Conversation(gen.conversation.template)
    conv.add("user", "the company said")
    conv.add("assistant", first_reply)
    conv.add("user", "shares rose")
    conv.add("assistant", None)
    return conv.as_prompt()


SMALL_CONTEXT = 48


@pytest.fixture(scope="module")
def q4_small_context(build_root, q4):
    """The q4 weights compiled with a context window a couple of short turns fill."""
    wd, _ = q4
    return wd, L.library(build_root, wd, context_window_size=SMALL_CONTEXT)


def test_generate_says_when_the_context_window_cut_the_reply(q4_small_context):
    from desv_export.engine.generation import Generator
    from desv_export.engine.sampler import SamplingConfig

    wd, lib = q4_small_context
    gen = Generator.open(wd, lib, "cpu")
    prompt = gen.prompt_ids("the market")
    full = gen.complete("the market", max_new_tokens=200, sampling=SamplingConfig())
    assert full.finish_reason == "context"
    # The last token is sampled from the full cache's logits and never fed back.
    assert len(prompt) + len(full.token_ids) == SMALL_CONTEXT + 1
    exact = gen.complete("the market", max_new_tokens=len(full.token_ids), sampling=SamplingConfig())
    assert exact.finish_reason == "length" and exact.token_ids == full.token_ids

    result = _run(["generate", wd, "--model-lib", lib, "--prompt", "the market", "--max-new-tokens", 200])
    assert result.exit_code == 0, result.output
    assert result.stdout == full.text + "\n"
    assert (f"stopped after {len(full.token_ids)} tokens: the context window ({SMALL_CONTEXT} tokens) is full"
            in result.stderr)
    quiet = _run(["generate", wd, "--model-lib", lib, "--prompt", "the market", "--max-new-tokens", 4])
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_chat_goes_on_after_the_context_window_is_full(q4_small_context):
    wd, lib = q4_small_context
    # Turn 1's reply fills the window; turn 2 cannot fit; /reset frees it for turn 3.
    script = "the company said\nshares rose\n/reset\nthe market\n/stats\n/exit\n"
    result = _run(["chat", wd, "--model-lib", lib, "--max-new-tokens", 200], input=script)
    assert result.exit_code == 0, result.output
    assert "the context window (48 tokens) is full" in result.stderr
    assert "Error: the conversation needs" in result.stderr and "/reset starts a fresh conversation" in result.stderr
    after_reset = result.stdout.split("RESET CHAT SUCCESSFULLY", 1)[1]
    assert "prefill:" in after_reset  # turn 3 ran, and /stats reports it


def test_chatml_prompt_matches_hf_chat_template(q4, tiny_llama_dir):
    from transformers import AutoTokenizer

    from desv_export.engine.conversation import Conversation
    from desv_export.engine.weight_dir import read_weight_dir

    wd, _ = q4
    conv = Conversation(read_weight_dir(wd).chat_config["conv_template"])
    conv.add("user", "hi")
    conv.add("assistant", "hello")
    conv.add("user", "bye")
    conv.add("assistant", None)
    hf = AutoTokenizer.from_pretrained(tiny_llama_dir).apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
         {"role": "user", "content": "bye"}], tokenize=False, add_generation_prompt=True)
    assert conv.as_prompt() == hf


def test_library_and_weight_dir_mismatch(build_root, tiny_llama_dir, tiny_llama_untied_dir):
    other = L.weight_dir(build_root, tiny_llama_dir, "q3f16_1")
    wd = L.weight_dir(build_root, tiny_llama_dir, "q4f16_1")
    result = _run(["generate", other, "--model-lib", L.library(build_root, wd), "--prompt", "x"])
    assert result.exit_code == 2
    assert "does not match" in result.output and "q_weight" in result.output


def test_missing_tokenizer(tmp_path, q4):
    wd, lib = q4
    bare = tmp_path / "bare"
    shutil.copytree(wd, bare)
    (bare / "tokenizer.json").unlink()
    result = _run(["generate", bare, "--model-lib", lib, "--prompt", "x"])
    assert result.exit_code == 2 and "tokenizer.json" in result.output


def test_missing_library(tmp_path, q4):
    wd, _ = q4
    result = _run(["chat", wd, "--model-lib", tmp_path / "nope.so"], input="/exit\n")
    assert result.exit_code == 2 and "nope.so" in result.output


def test_sampler_semantics():
    import numpy as np

    from desv_export.engine.sampler import Sampler, SamplingConfig

    logits = np.array([1.0, 3.0, 2.0, -1.0], "float32")
    assert Sampler(SamplingConfig(temperature=0))(logits) == 1
    # repetition penalty: 3.0 / 2 = 1.5 < 2.0, so token 2 wins greedily
    assert Sampler(SamplingConfig(repetition_penalty=2.0))(logits, seen=[1]) == 2
    # top-p small enough keeps only the argmax
    s = Sampler(SamplingConfig(temperature=1.0, top_p=0.05, seed=0))
    assert {s(logits) for _ in range(20)} == {1}
    with pytest.raises(UserError):
        SamplingConfig(temperature=-1)


@pytest.mark.parametrize("option, value", [("--seed", -1), ("--top-p", 0), ("--temperature", -1),
                                           ("--repetition-penalty", 0)])
def test_bad_sampling_option_is_one_line(q4, option, value):
    wd, lib = q4
    result = _run(["generate", wd, "--model-lib", lib, "--prompt", "x", option, value])
    assert result.exit_code == 2 and option in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
