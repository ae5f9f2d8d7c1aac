"""How separable the three axes are from the prompt at all: reference classifiers for routing.

Routing accuracy alone cannot say whether a miss is the router's fault or the data's: a TruthfulQA
misconception question ("What happens if you crack your knuckles a lot?") reads like an ordinary
helpful question. So `evaluate` also trains three reference classifiers on the routers' own training
labels — every distinct train-split prompt of each axis (`data.roles.router_examples` teaches the
routers the same prompts) — and scores them on the very prompts routing is measured on:

- text: TF-IDF of word uni- and bigrams + logistic regression (scikit-learn), what the words alone tell;
- text, all prompts: the strongest text classifier we found — TF-IDF of word uni- and bigrams and
  of character 2–5-grams, logistic regression — fitted on *every* distinct train-split prompt (about
  14,000; the routers see the same): a ceiling for what any prompt-reading router can reach on
  these labels without knowing more than the training data says;
- features: logistic regression on what the routers read — each layer's normalised input hidden
  state (`Router.features`, the token's own part), averaged over the prompt's tokens after the
  template prefix and concatenated over layers — the best a linear read-out of the prompt's
  router features reaches.

The first and the last are fitted on at most `EvalConfig.separability_per_axis` train prompts per
axis (a fixed pseudo-random choice); all three use balanced class weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.data.records import AxisExample, eval_prompts
from alignx_demo.data.templates import encode_prompt, template_prefix_length
from alignx_demo.evaluation.hhh import routing_examples
from alignx_demo.evaluation.tasks import Context, PromptSet, Sampler, Task


def train_prompts(examples: list[AxisExample], per_axis: int | None) -> list[AxisExample]:
    """Distinct train-split prompts of each axis (at most `per_axis`, or all, mixed over sources): the routers' labels."""
    return [e for axis in AXES for e in eval_prompts(examples, axis, per_axis, split="train", mixed=True)]


@torch.no_grad()
def prompt_features(mocae: Any, tokenizer: Any, items: list[AxisExample], max_len: int) -> np.ndarray:
    """(N, L·D): per prompt, each layer's router features (own part) averaged over the prompt tokens
    after the template prefix, under raw soft routing."""
    device = next(mocae.model.parameters()).device
    skip = template_prefix_length(tokenizer)
    hidden = mocae.model.config.hidden_size
    rows = []
    for item in items:
        ids = encode_prompt(tokenizer, item.prompt)[-max_len:]
        first = min(skip, len(ids) - 1)
        with mocae.routed(RoutingSettings(mode="soft", calibrated=False)), mocae.record(features=True) as record:
            mocae(input_ids=torch.tensor([ids], device=device))
        rows.append(torch.cat([f[0][0, first:, :hidden].float().mean(0).cpu() for f in record.features]).numpy())
    return np.stack(rows)


def _scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    return {"accuracy": float((predicted == truth).mean()),
            "per_axis": {a: float((predicted[truth == k] == k).mean()) for k, a in enumerate(AXES) if (truth == k).any()}}


def _text_classifier(texts: list[str], labels: np.ndarray, characters: bool) -> Any:
    """TF-IDF (word 1–2-grams, and with `characters` also character 2–5-grams within words) +
    balanced logistic regression, fitted."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    min_df = 2 if len(texts) > 50 else 1
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, sublinear_tf=True)
    vectors = make_union(words, TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=min_df, sublinear_tf=True)) \
        if characters else words
    model = make_pipeline(vectors, LogisticRegression(C=16.0 if characters else 4.0, max_iter=3000, class_weight="balanced"))
    return model.fit(texts, labels)


def separability(ctx: Context, mocae: Any, items: list[AxisExample]) -> dict[str, Any]:
    """Accuracy of the reference classifiers on `items`, fitted on train-split prompts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = train_prompts(ctx.examples, ctx.cfg.separability_per_axis)
    y_train = np.array([AXES.index(e.axis) for e in train])
    y_test = np.array([AXES.index(e.axis) for e in items])
    text = _text_classifier([e.prompt for e in train], y_train, characters=False)
    every = train_prompts(ctx.examples, None)
    y_every = np.array([AXES.index(e.axis) for e in every])
    text_all = _text_classifier([e.prompt for e in every], y_every, characters=True)
    features = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced"))
    features.fit(prompt_features(mocae, ctx.tokenizer, train, ctx.max_len), y_train)
    return {
        "train_prompts": {a: int((y_train == k).sum()) for k, a in enumerate(AXES)},
        "text_tfidf": _scores(text.predict([e.prompt for e in items]), y_test),
        "all_train_prompts": {a: int((y_every == k).sum()) for k, a in enumerate(AXES)},
        "text_tfidf_chars_all_prompts": _scores(text_all.predict([e.prompt for e in items]), y_test),
        "router_features_linear": _scores(features.predict(prompt_features(mocae, ctx.tokenizer, items, ctx.max_len)), y_test),
    }


SEPARABILITY_TASK = Task(
    "routing_separability", 1,
    PromptSet("routing_eval", "distinct eval-split prompts per axis, mixed over sources",
              lambda ctx: routing_examples(ctx.examples, ctx.cfg.routing_per_axis), lambda cfg: 3 * cfg.routing_per_axis),
    Sampler("reference_classifiers", "TF-IDF + logistic regression on the prompt text, and logistic regression on the "
            "prompt-mean router features, both fitted on train-split prompts of each axis", separability,
            room=lambda cfg: cfg.new_tokens),  # the routing eval's room, so the same prompts are drawn
    lambda ctx, items, out: out, scope="model",
    description="how well the axis can be told from the prompt at all: reference classifiers on the routing eval prompts",
)
