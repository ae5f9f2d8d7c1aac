"""Tiny synthetic data directories in the formats of the real offline files (no real data copied)."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

from alignx_demo.data.sources import OOD_SOURCE_FILES, SOURCE_FILES, XSTEST_COMPLETION_MODELS, XSTEST_COMPLETIONS_FILE

WORDS = (
    "apple river garden music window planet coffee yellow engine forest quiet bright simple travel "
    "market winter summer ocean mountain paper pencil teacher student history science number water "
    "light stone cloud friend market story answer question method system design value energy"
).split()


def sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def paragraph(rng: random.Random, k: int = 3) -> str:
    return " ".join(sentence(rng, rng.randint(5, 12)) for _ in range(k))


def _alpaca_rows(rng: random.Random, n: int, response_field: str = "output", tag: str = "") -> list[dict]:
    return [
        {"instruction": f"{tag} task {i}: {sentence(rng)}", "input": sentence(rng) if i % 3 == 0 else "",
         response_field: paragraph(rng)}
        for i in range(n)
    ]


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _write_csv(path: Path, header: list[str], rows: list[list], bom: bool = False) -> None:
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


TQA_CATEGORIES = ("Misconceptions", "Law", "Health", "Paranormal")
"""TruthfulQA categories of the fixture's questions, in turn (Law and Paranormal are held-out categories)."""
MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


def tqa_questions(n: int) -> list[str]:
    return [f"What happens if you touch a {WORDS[i % len(WORDS)]} number {i}?" for i in range(n)]


def make_data_dir(root: Path, n: int = 40, seed: int = 0) -> Path:
    """Write every file the readers know, n rows each (fewer for small sets); return the folder."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    f = {k: root / v for k, v in SOURCE_FILES.items()}

    lima = _alpaca_rows(rng, n, tag="lima")
    for r in lima:
        r["history"] = []
    lima[1]["history"] = [["first lima turn question", "first lima turn answer"], ["second", "second answer"]]
    _write_json(f["lima"], lima)
    _write_jsonl(f["dolly"], _alpaca_rows(rng, n, tag="dolly"))
    _write_json(f["alpaca_gpt4_demo"], _alpaca_rows(rng, n, tag="gpt4demo"))
    _write_json(f["alpaca_cleaned"], _alpaca_rows(rng, n, tag="cleaned"))
    _write_json(f["gpteacher_roleplay"], _alpaca_rows(rng, n, "response", tag="roleplay"))
    _write_json(f["gpteacher_codegen"], _alpaca_rows(rng, n, "response", tag="codegen"))
    seeds = [
        {"id": f"seed_task_{i}", "name": f"t{i}", "instruction": f"seed {i}: {sentence(rng)}",
         "instances": [{"input": sentence(rng) if i % 2 else "", "output": paragraph(rng, 2)}], "is_classification": False}
        for i in range(n // 2)
    ]
    _write_jsonl(f["self_instruct_seed"], seeds)
    ae = [{"dataset": "vicuna", "instruction": f"alpacaeval {i}: {sentence(rng)}", "output": paragraph(rng), "generator": "gpt4_1106_preview"}
          for i in range(n)]
    _write_json(f["alpacaeval"], ae)
    for key, gen in (("alpacaeval_davinci003", "text_davinci_003"), ("alpacaeval_alpaca7b", "alpaca-7b")):
        _write_json(f[key], [{**r, "output": sentence(rng), "generator": gen} for r in ae])

    _write_json(f["safety_llamas"], [
        {"instruction": f"Harmful request {i}: {sentence(rng)}", "input": "",
         "output": "I cannot help with that, because it could hurt people. " + sentence(rng)}
        for i in range(n)
    ])
    hh = [
        {"chosen": f"\n\nHuman: risky question {i} {sentence(rng)}\n\nAssistant: I would rather not. {sentence(rng)}"
                   f"\n\nHuman: why?\n\nAssistant: {sentence(rng)}",
         "rejected": f"\n\nHuman: risky question {i}\n\nAssistant: sure"}
        for i in range(n)
    ]
    with gzip.open(f["hh_harmless"], "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in hh))

    questions = tqa_questions(n)
    _write_csv(
        f["truthfulqa"], ["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"],
        [["Adversarial", TQA_CATEGORIES[i % len(TQA_CATEGORIES)], q, f"Nothing happens {i}", f"Nothing happens {i}; I have no comment; It is fine {i}",
          f"You explode {i}; You fly {i}", "https://example.org"] for i, q in enumerate(questions)],
        bom=True,
    )
    judge = []
    for i, q in enumerate(questions):
        judge.append({"prompt": f"Q: {q}\nA: A true judged answer {i}.\nTrue:", "completion": " yes"})
        judge.append({"prompt": f"Q: {q}\nA: A false judged answer {i}.\nTrue:", "completion": " no"})
    _write_jsonl(f["truthfulqa_judge"], judge)
    _write_json(f["truthfulqa_mc"], [
        {"question": q, "mc1_targets": {f"Nothing happens {i}": 1, f"You explode {i}": 0},
         "mc2_targets": {f"Nothing happens {i}": 1, "I have no comment": 1, f"You explode {i}": 0}}
        for i, q in enumerate(questions)
    ])

    xs_rows = [[i + 1, f"How can I kill a {WORDS[i % len(WORDS)]} process {i}?", "homonyms" if i % 2 == 0 else "contrast_homonyms",
                "safe" if i % 2 == 0 else "unsafe", "kill", "violence"] for i in range(20)]
    _write_csv(f["xstest"], ["id", "prompt", "type", "label", "focus", "note"], xs_rows)
    for model in XSTEST_COMPLETION_MODELS:
        _write_csv(root / XSTEST_COMPLETIONS_FILE.format(variant=model),
                   ["id", "type", "prompt", "completion", "annotation_1", "annotation_2", "agreement", "final_label"],
                   [[f"v2-{r[0]}", r[2], r[1], "I cannot help." if r[3] == "unsafe" else "Use the kill command.",
                     "x", "x", "True", "2_full_refusal" if r[3] == "unsafe" else "1_full_compliance"] for r in xs_rows])
    _write_csv(f["beavertails"], ["", "prompt", "category", "category_id"],
               [[i, f"Beaver harmful prompt {i} {sentence(rng)}", "animal_abuse", 0] for i in range(14)])
    _write_csv(f["advbench"], ["goal", "target"], [[f"Write a harmful thing {i}", f"Sure, here is {i}"] for i in range(12)])
    for name in ("stl_malicious", "stl_qharm", "stl_cona", "stl_controversial", "stl_physical_unsafe", "stl_alpaca", "stl_physical_safe"):
        obj = {"instructions": [f"{name} prompt {i} {sentence(rng)}" for i in range(6)], "inputs": []}
        if name == "stl_malicious":
            obj["tags"] = ["crime"] * 6
        _write_json(f[name], obj)
    # one harmful training prompt duplicates an evaluation prompt (decontamination target)
    rows = json.loads(f["safety_llamas"].read_text())
    rows[0]["instruction"] = "Write a harmful thing 3"
    _write_json(f["safety_llamas"], rows)

    # MT-Bench (out-of-distribution set): two questions per category; question 81's first turn is an
    # AlpacaEval prompt (as two real ones are), so the OOD slice must leave it out
    mt = [{"question_id": 81 + i, "category": MT_BENCH_CATEGORIES[i % 8],
           "turns": [f"MT-Bench {MT_BENCH_CATEGORIES[i % 8]} question {i}: please explain the {WORDS[i]}.", "Now shorter."]}
          for i in range(16)]
    mt[0]["turns"][0] = ae[0]["instruction"]
    _write_jsonl(root / OOD_SOURCE_FILES["mt_bench"], mt)

    _write_json(root / "EXCLUDE_alpacaeval_overlap.json", [
        {"file": SOURCE_FILES["dolly"], "row_index_0based": 2, "match": "exact"},
        {"file": SOURCE_FILES["gpteacher_roleplay"], "row_index_0based": 0, "match": "paraphrase"},
    ])
    return root
