"""hellaswag.py: data loading and caching, rendering, batched scoring against a direct
per-example computation, the 2-rank sum, the offline error and the command line."""
import json
import os
import random
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import hellaswag
from conftest import run_script
from fineweb import gpt2_encoding

WORDS = ("the man walks to a red car and opens door then sits down while she holds small dog "
         "near kitchen table before they start cooking dinner with fresh bread on plate").split()
TINY = dict(block_size=64, vocab_size=50304, n_layer=1, n_head=2, n_embd=32)


def make_examples(count, seed=0, context_words=(4, 18), ending_words=(1, 10)):
    """HellaSwag-format examples of random words; short enough for a block of 64 tokens."""
    rng = random.Random(seed)
    def sentence(low, high):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))
    return [{"ind": index, "activity_label": "Testing",
             "ctx": sentence(*context_words).capitalize(),
             "endings": [sentence(*ending_words) + "." for _ in range(4)],
             "label": rng.randrange(4), "split": "val", "split_type": "indomain"}
            for index in range(count)]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiny_gpt(seed=0):
    from train_gpt2 import GPT, GPTConfig
    torch.manual_seed(seed)
    return GPT(GPTConfig(**TINY))


def direct_predictions(logits_of, example, encoding):
    """(argmin of summed loss, argmin of loss per token): each ending alone, unpadded."""
    context = encoding.encode(example["ctx"])
    summed, per_token = [], []
    for ending in example["endings"]:
        row = torch.tensor([context + encoding.encode(" " + ending)])
        log_probs = F.log_softmax(logits_of(row)[0, :-1].float(), dim=-1)
        targets = row[0, 1:]
        losses = -log_probs[torch.arange(len(targets)), targets][len(context) - 1:]
        summed.append(losses.sum().item())
        per_token.append(losses.mean().item())
    return summed.index(min(summed)), per_token.index(min(per_token))


def direct_counts(logits_of, examples):
    encoding = gpt2_encoding()
    with torch.no_grad():
        predictions = [direct_predictions(logits_of, e, encoding) for e in examples]
    correct = sum(pred == e["label"] for (pred, _), e in zip(predictions, examples))
    correct_norm = sum(pred == e["label"] for (_, pred), e in zip(predictions, examples))
    return predictions, correct, correct_norm


def our_logits(model):
    return lambda row: model(row)[0]


# ----------------------------------------------------------------------------------------------
# Data

def test_local_file_is_read_with_string_labels_as_ints_and_limit_keeps_the_first(tmp_path):
    rows = make_examples(5)
    rows[1]["label"] = str(rows[1]["label"])  # as in a naive copy of the Hugging Face split
    path = write_jsonl(tmp_path / "val.jsonl", rows)
    examples = hellaswag.load_examples(path, limit=3)
    assert [e["ctx"] for e in examples] == [r["ctx"] for r in rows[:3]]
    assert [e["label"] for e in examples] == [int(r["label"]) for r in rows[:3]]
    assert len(hellaswag.load_examples(path)) == 5


def test_malformed_line_is_reported_with_file_and_line_number(tmp_path):
    rows = make_examples(3)
    rows[2]["endings"] = rows[2]["endings"][:3]
    path = write_jsonl(tmp_path / "val.jsonl", rows)
    with pytest.raises(hellaswag.HellaSwagUnavailable, match=r"val\.jsonl:3 .*4 strings"):
        hellaswag.load_examples(path)


def test_hugging_face_rows_convert_to_the_original_format():
    from datasets import Dataset
    rows = make_examples(3)
    hf_split = Dataset.from_list([dict(row, label=str(row["label"])) for row in rows])
    assert hellaswag.original_format(hf_split) == rows


def test_download_falls_back_to_github_url_and_caches_jsonl_once(tmp_path, monkeypatch):
    """Hugging Face unreachable, the GitHub URL served by a local HTTP server."""
    import functools
    import http.server
    import threading
    rows = make_examples(4)
    write_jsonl(tmp_path / "served" / "hellaswag_val.jsonl", rows)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "served"))
    for name in ("http_proxy", "HTTP_PROXY"):  # a proxy would not reach our local server
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    def hub_offline():
        raise ConnectionError("offline")
    monkeypatch.setattr(hellaswag, "rows_from_hugging_face", hub_offline)
    monkeypatch.setattr(hellaswag, "GITHUB_URL",
                        f"http://127.0.0.1:{server.server_port}/hellaswag_val.jsonl")
    try:
        examples = hellaswag.load_examples(cache_dir=tmp_path / "cache")
    finally:
        server.shutdown()
    assert examples == rows
    assert sorted(os.listdir(tmp_path / "cache")) == ["hellaswag_val.jsonl"]  # no temp left
    # Served from the cache now: the server is down.
    assert hellaswag.load_examples(cache_dir=tmp_path / "cache", limit=2) == rows[:2]


def test_downloaded_rows_that_are_not_hellaswag_are_not_cached(tmp_path, monkeypatch):
    def github_offline():
        raise OSError("offline")
    monkeypatch.setattr(hellaswag, "rows_from_hugging_face", lambda: [{"text": "a page"}])
    monkeypatch.setattr(hellaswag, "rows_from_github", github_offline)
    with pytest.raises(hellaswag.HellaSwagUnavailable,
                       match="Hugging Face: not HellaSwag examples; GitHub: OSError"):
        hellaswag.load_examples(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "hellaswag_val.jsonl").exists()


def test_offline_without_cache_exits_2_with_one_line_saying_where_to_put_the_file(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
               # A closed local port as proxy: the GitHub request is refused at once.
               "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "no_proxy": "", "NO_PROXY": ""}
    cache_dir = tmp_path / "cache"
    result = run_script("hellaswag.py", "--model", "gpt2", "--cache_dir", cache_dir,
                        env=offline, timeout=120)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: cannot get HellaSwag (Hugging Face: ")
    assert "GitHub: URLError" in last_line
    assert str(cache_dir / "hellaswag_val.jsonl") in last_line and "--data PATH" in last_line
    assert "Traceback" not in result.stderr
    assert not cache_dir.exists() or not os.listdir(cache_dir)


# ----------------------------------------------------------------------------------------------
# Rendering

def test_rows_are_context_then_space_ending_with_mask_on_the_ending_only():
    encoding = gpt2_encoding()
    example = make_examples(1)[0]
    rows, masks = hellaswag.render_example(example, encoding, block_size=1024)
    context = encoding.encode(example["ctx"])
    for row, mask, ending in zip(rows, masks, example["endings"]):
        ending_tokens = encoding.encode(" " + ending)
        assert row == context + ending_tokens
        assert mask == [0] * len(context) + [1] * len(ending_tokens)


def test_long_context_loses_its_start_equally_in_all_rows_to_fit_the_block():
    encoding = gpt2_encoding()
    example = make_examples(1, context_words=(60, 60), ending_words=(3, 8))[0]
    rows, masks = hellaswag.render_example(example, encoding, block_size=32)
    endings = [encoding.encode(" " + ending) for ending in example["endings"]]
    kept = 32 - max(len(ending) for ending in endings)
    context_tail = encoding.encode(example["ctx"])[-kept:]
    assert max(len(row) for row in rows) == 32
    for row, mask, ending in zip(rows, masks, endings):
        assert row == context_tail + ending
        assert mask == [0] * kept + [1] * len(ending)


def test_ending_longer_than_the_block_keeps_its_first_tokens_after_one_context_token():
    encoding = gpt2_encoding()
    example = make_examples(1, ending_words=(3, 3))[0]
    example["endings"][2] = " ".join(WORDS * 2)
    rows, masks = hellaswag.render_example(example, encoding, block_size=16)
    long_ending = encoding.encode(" " + example["endings"][2])
    assert rows[2] == encoding.encode(example["ctx"])[-1:] + long_ending[:15]
    assert masks[2] == [0] + [1] * 15
    assert all(len(row) <= 16 and mask[0] == 0 for row, mask in zip(rows, masks))


def test_batch_pads_rows_to_the_longest_with_token_zero_and_mask_zero():
    encoding = gpt2_encoding()
    rendered = [hellaswag.render_example(e, encoding, 64) for e in make_examples(3)]
    tokens, mask = hellaswag.collate(rendered)
    rows = [row for example_rows, _ in rendered for row in example_rows]
    masks = [m for _, example_masks in rendered for m in example_masks]
    assert tokens.shape == mask.shape == (12, max(len(row) for row in rows))
    for index, (row, row_mask) in enumerate(zip(rows, masks)):
        assert tokens[index, :len(row)].tolist() == row
        assert mask[index, :len(row)].tolist() == row_mask
        assert not tokens[index, len(row):].any() and not mask[index, len(row):].any()


# ----------------------------------------------------------------------------------------------
# Scoring

def test_batched_ending_losses_equal_each_row_scored_alone_without_padding():
    model = tiny_gpt().eval()
    encoding = gpt2_encoding()
    rendered = [hellaswag.render_example(e, encoding, 64) for e in make_examples(3, seed=1)]
    tokens, mask = hellaswag.collate(rendered)
    with torch.no_grad():
        summed, counts = hellaswag.ending_losses(model, tokens, mask)
        rows = [(row, m) for rows, masks in rendered for row, m in zip(rows, masks)]
        for index, (row, row_mask) in enumerate(rows):
            logits, _ = model(torch.tensor([row]))
            losses = F.cross_entropy(logits[0, :-1], torch.tensor(row[1:]), reduction="none")
            ending = torch.tensor(row_mask[1:]).bool()
            assert counts[index].item() == ending.sum().item()
            assert summed[index].item() == pytest.approx(losses[ending].sum().item(), rel=1e-5)


def test_evaluate_matches_direct_per_example_predictions():
    """Labels set to the direct computation's own predictions: evaluate must score 100% with
    the matching rule, and agree on every example with the other rule."""
    model = tiny_gpt()
    examples = make_examples(11, seed=2)
    predictions, _, _ = direct_counts(our_logits(model), examples)
    by_sum = [dict(e, label=pred) for e, (pred, _) in zip(examples, predictions)]
    by_mean = [dict(e, label=pred) for e, (_, pred) in zip(examples, predictions)]
    agree = sum(a == b for a, b in predictions)
    model.train()
    result = hellaswag.evaluate(model, by_sum, "cpu", batch_size=4)  # 4 + 4 + 3
    assert model.training  # put back in the mode it came in
    assert result == {"count": 11, "correct": 11, "correct_norm": agree,
                      "acc": 1.0, "acc_norm": agree / 11}
    result = hellaswag.evaluate(model, by_mean, "cpu", batch_size=5)
    assert (result["correct"], result["correct_norm"]) == (agree, 11)


def test_evaluate_counts_equal_direct_counts_on_random_labels():
    model = tiny_gpt(seed=3)
    examples = make_examples(10, seed=3)
    _, correct, correct_norm = direct_counts(our_logits(model), examples)
    result = hellaswag.evaluate(model, examples, "cpu", batch_size=3)
    assert (result["count"], result["correct"], result["correct_norm"]) == (10, correct,
                                                                           correct_norm)
    assert result["acc_norm"] == correct_norm / 10


def test_compiled_model_is_scored_through_its_plain_module():
    model = tiny_gpt(seed=3)
    examples = make_examples(4, seed=6)
    # Unwrapped before the first call, so nothing is compiled here.
    compiled = hellaswag.evaluate(torch.compile(model), examples, "cpu")
    assert compiled == hellaswag.evaluate(model, examples, "cpu")


def test_model_with_a_small_vocabulary_is_refused_with_a_clear_error():
    from train_gpt2 import GPT, GPTConfig
    model = GPT(GPTConfig(**dict(TINY, vocab_size=512)))
    with pytest.raises(hellaswag.HellaSwagUnavailable, match="vocabulary has 512 tokens"):
        hellaswag.evaluate(model, make_examples(2), "cpu")


# ----------------------------------------------------------------------------------------------
# Two ranks (gloo): one spawn serves both tests, since starting the processes is the slow part

def rank_main(rank, world, tmp_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}",
                            rank=rank, world_size=world)
    try:
        outcome = {"evaluate": evaluate_on_rank(tmp_path),
                   "download": download_on_rank(rank, tmp_path)}
    finally:
        dist.destroy_process_group()
    (tmp_path / f"rank{rank}.json").write_text(json.dumps(outcome))


def evaluate_on_rank(tmp_path):
    examples = hellaswag.load_examples(tmp_path / "val.jsonl")
    return hellaswag.evaluate(tiny_gpt(), examples, "cpu", batch_size=2)


def download_on_rank(rank, tmp_path):
    def slow_download(path):
        (tmp_path / f"downloaded_by_rank{rank}").touch()
        time.sleep(1.0)  # a rank that did not wait would find no file yet
        write_jsonl(path, make_examples(3))
    hellaswag.download_examples = slow_download
    examples = hellaswag.load_examples(cache_dir=tmp_path / "cache")
    def no_network(path):
        raise hellaswag.HellaSwagUnavailable("offline")
    hellaswag.download_examples = no_network
    try:
        hellaswag.load_examples(cache_dir=tmp_path / "empty")
        failure = None
    except hellaswag.HellaSwagUnavailable as error:
        failure = str(error)
    return {"examples": examples, "failure": failure}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Outcomes of rank 0 and rank 1, and their folder."""
    tmp_path = tmp_path_factory.mktemp("two_ranks")
    write_jsonl(tmp_path / "val.jsonl", make_examples(9, seed=4))
    context = mp.spawn(rank_main, args=(2, tmp_path), nprocs=2, join=False)
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("the two ranks are still running: stuck at a collective")
    outcomes = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return outcomes, tmp_path


def test_two_gloo_ranks_sum_to_the_single_process_counts(two_ranks):
    outcomes, tmp_path = two_ranks
    single = hellaswag.evaluate(tiny_gpt(), make_examples(9, seed=4), "cpu", batch_size=3)
    assert [outcome["evaluate"] for outcome in outcomes] == [single, single]


def test_only_rank_zero_downloads_the_other_waits_and_both_report_a_failure(two_ranks):
    outcomes, tmp_path = two_ranks
    assert [p.name for p in tmp_path.glob("downloaded_by_rank*")] == ["downloaded_by_rank0"]
    expected = make_examples(3)
    assert [outcome["download"]["examples"] for outcome in outcomes] == [expected, expected]
    assert outcomes[0]["download"]["failure"] == "offline"
    assert "hellaswag_val.jsonl" in outcomes[1]["download"]["failure"]


# ----------------------------------------------------------------------------------------------
# Command line (in this process: importing torch and transformers again would double the time;
# the offline test above runs the script as a separate process)

def run_cli(capsys, *flags):
    """(exit code, stdout, stderr) of `python hellaswag.py FLAGS`."""
    try:
        code = hellaswag.main([str(flag) for flag in flags])
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_scores_a_local_hugging_face_dir_like_a_direct_computation(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(5)
    config = GPT2Config(n_positions=64, n_embd=32, n_layer=1, n_head=2, vocab_size=50257)
    hf_model = GPT2LMHeadModel(config).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    examples = make_examples(12, seed=5)
    data = write_jsonl(tmp_path / "val.jsonl", examples)
    _, correct, correct_norm = direct_counts(lambda row: hf_model(row).logits, examples)
    code, out, err = run_cli(capsys, "--model", tmp_path / "hf", "--data", data,
                             "--device", "cpu", "--batch_size", "5")
    assert code == 0, err
    summary = dict(line.split(maxsplit=1) for line in out.splitlines())
    assert summary["count"] == "12"
    assert summary["acc"].startswith(f"{correct / 12:.4f}  ({correct}/12,")
    assert summary["acc_norm"].startswith(f"{correct_norm / 12:.4f}  ({correct_norm}/12,")


def test_cli_on_a_checkpoint_matches_the_hella_line_the_trainer_logged(tmp_path, capsys,
                                                                      shards, monkeypatch):
    """The trainer's hook at its final step and the CLI on the checkpoint of that step score
    the same model on the same examples; both must agree with the direct computation."""
    import train_gpt2
    examples = make_examples(6, seed=7)
    write_jsonl(tmp_path / "hellaswag" / "hellaswag_val.jsonl", examples)  # the default cache
    monkeypatch.chdir(tmp_path)
    trained = train_gpt2.main([
        "--model", "d2", "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size",
        "64", "--seq_len", "32", "--batch_size", "2", "--total_batch_size", "64",
        "--data_dir", str(shards), "--device", "cpu", "--no-compile", "--lr_schedule", "constant",
        "--max_steps", "1", "--warmup_steps", "0", "--val_every", "0", "--sample_every", "0",
        "--hellaswag_every", "1", "--hellaswag_limit", "5"])
    assert trained == 0, capsys.readouterr().err
    logged = [line.split() for line in open("log/constant/log.txt") if " hella " in line]
    assert [line[:2] for line in logged] == [["0", "hella"], ["1", "hella"]]
    checkpoint = "log/constant/ckpt_000001.pt"
    model = train_gpt2.load_model_from_checkpoint(checkpoint)
    _, _, correct_norm = direct_counts(our_logits(model), examples[:5])
    assert logged[1][2] == f"{correct_norm / 5:.4f}"
    capsys.readouterr()
    code, out, err = run_cli(capsys, "--ckpt", checkpoint, "--limit", "5", "--device", "cpu")
    assert code == 0, err
    summary = dict(line.split(maxsplit=1) for line in out.splitlines())
    assert summary["acc_norm"].startswith(f"{correct_norm / 5:.4f}  ({correct_norm}/5,")


@pytest.mark.parametrize("flags, message", [
    (["--ckpt", "missing.pt"], "error: no checkpoint at missing.pt;"),
    (["--model", "gpt2", "--limit", "0"], "error: argument --limit: expected a positive"),
    (["--model", "gpt2", "--data", "missing.jsonl"], "error: no HellaSwag file at missing"),
    (["--model", "gpt2", "--device", "cpu", "--dtype", "float16"], "error: --dtype float16"),
    (["--limit", "5"], "error: one of the arguments --ckpt --model is required"),
])
def test_bad_input_is_one_error_line_and_exit_code_2(capsys, flags, message):
    code, out, err = run_cli(capsys, *flags)
    assert code == 2
    assert err.startswith(message) and len(err.splitlines()) == 1
