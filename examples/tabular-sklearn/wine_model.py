"""A silo's own scikit-learn model, declared in the silo config as ``model = "wine_model:build"``.

xsilo calls ``build`` with whichever of ``n_features``, ``classes`` and ``seed`` it accepts and
wraps the estimator; the built-in ``sklearn:LogisticRegression`` works on the same data too.
"""

from __future__ import annotations

from sklearn.neural_network import MLPClassifier


def build(seed: int = 0) -> MLPClassifier:
    """A one-hidden-layer MLP; momentum SGD so FedProx's proximal step is well defined."""
    return MLPClassifier(hidden_layer_sizes=(16,), solver="sgd", momentum=0.9,
                         learning_rate_init=0.05, random_state=seed)
