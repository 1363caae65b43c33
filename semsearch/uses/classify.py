"""Labels from embeddings: k-nearest-neighbour votes among labelled rows (classify), or a scikit-learn
logistic regression trained on the labelled rows' vectors (classifier). A row whose label column is NULL
is a row to label."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np
from sqlalchemy import Connection, Float, Text, and_, column, func, select
from sqlalchemy.orm import Session

from ..errors import InvalidQuery
from ..query import _is_int, _vector_param, filter_keys, key_join, stored_key
from .rows import Bind, connection, embed_documents, sklearn, stored_vectors, vectors_of

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, ColumnExpressionArgument

    from ..declaration import SearchIndex


class Prediction(NamedTuple):
    label: Any
    confidence: float  # the label's share of the neighbours' votes (classify) or its probability (classifier)


def label_column(index: SearchIndex[Any], label: Any) -> ColumnElement[Any]:
    """The label as a column of the index's table, or an error that says which columns it may be."""
    expression = getattr(label, "expression", label)
    table = getattr(expression, "table", None)
    if table is not index.table or expression.name not in index.table.c:
        names = ", ".join(f"{index.model_class.__name__}.{c.key}" for c in index.table.c if not c.primary_key)
        given = (f"{label.class_.__name__}.{label.key}" if hasattr(label, "class_") and hasattr(label, "key")
                 else repr(label))
        raise InvalidQuery(f"label must be a column of {index.model_class.__name__} (one of {names}), not {given}")
    return expression


def _labelled_keys(index: SearchIndex[Any], label: ColumnElement[Any],
                   condition: ColumnExpressionArgument[bool] | None) -> ColumnElement[Any]:
    keys = filter_keys(index, label.is_not(None) if condition is None else and_(label.is_not(None), condition))
    assert keys is not None
    return keys


def _require_labels(conn: Connection, index: SearchIndex[Any], label: ColumnElement[Any]) -> None:
    if not conn.execute(select(label).where(label.is_not(None)).limit(1)).first():
        raise InvalidQuery(f"no labelled rows: {index.model_class.__name__}.{label.key} is NULL in every row "
                           "(label some rows first; the NULL ones are those to predict)")


def classify(index: SearchIndex[Any], rows_or_texts: Sequence[Any], *, label: Any, k: int = 10,
             filter: ColumnExpressionArgument[bool] | None = None, session: Bind = None) -> list[Prediction]:
    """Per input (a row, a key or a text), the label most of its k nearest labelled rows (within filter=)
    carry, each vote weighted by its similarity; confidence is the winning label's share of the weight
    (a vote share: a text unlike every row still gets the label of the least unlike). A row is never its
    own neighbour."""
    column_ = label_column(index, label)
    if not _is_int(k) or k < 1:
        raise InvalidQuery(f"k must be an integer of 1 or more (the labelled neighbours that vote), not {k!r}")
    items = _inputs(rows_or_texts)
    predictions = []
    with connection(index, session) as conn:
        _require_labels(conn, index, column_)
        vectors, keys = vectors_of(conn, index, items)
        labelled = _labelled_keys(index, column_, filter)
        for vector, key in zip(vectors, keys):
            near = func.semsearch.semantic_search(index.name, _vector_param(index, vector), k + (key is not None),
                                                  labelled).table_valued(column("key", Text), column("score", Float))
            votes: dict[Any, float] = defaultdict(float)
            rows = conn.execute(select(near.c.key, near.c.score, column_).join(index.table, key_join(index, near.c.key))
                                .order_by(near.c.score.desc(), func.length(near.c.key), near.c.key))
            for neighbour, score, value in [r for r in rows if r[0] != key][:k]:
                votes[value] += max(score, 0.0) + 1e-9  # (a vote counts even at similarity 0)
            best = max(votes, key=lambda v: (votes[v], str(v)))
            predictions.append(Prediction(best, votes[best] / sum(votes.values())))
    return predictions


@dataclass
class EmbeddingClassifier:
    """A scikit-learn LogisticRegression over the index's row vectors. accuracy: its cross-validated
    accuracy on the labelled rows (None with too few rows per label); baseline: the majority label's share."""

    index: SearchIndex[Any]
    model: Any
    classes_: np.ndarray
    accuracy: float | None
    baseline: float
    rows: int
    session: Bind = None

    def _vectors(self, rows_or_texts: Sequence[Any], session: Bind) -> np.ndarray:
        items = _inputs(rows_or_texts)
        if all(isinstance(item, str) for item in items):  # texts need the model, not the database
            return _unit(embed_documents(self.index, items))
        with connection(self.index, session if session is not None else self.session) as conn:
            return _unit(vectors_of(conn, self.index, items)[0])

    def predict(self, rows_or_texts: Sequence[Any], *, session: Bind = None) -> list[Any]:
        return list(self.model.predict(self._vectors(rows_or_texts, session)))

    def predict_proba(self, rows_or_texts: Sequence[Any], *, session: Bind = None) -> np.ndarray:
        """One row per input, one column per label (in classes_ order)."""
        return np.asarray(self.model.predict_proba(self._vectors(rows_or_texts, session)))


def _inputs(rows_or_texts: Sequence[Any] | str) -> list[Any]:
    items = [rows_or_texts] if isinstance(rows_or_texts, str) else list(rows_or_texts)
    if any(isinstance(item, str) and not item.strip() for item in items):
        raise InvalidQuery("an empty text has no meaning to classify: give the text, a row or its key")
    return items


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.where(norms == 0, 1, norms), dtype=np.float32)


def classifier(index: SearchIndex[Any], *, label: Any, filter: ColumnExpressionArgument[bool] | None = None,
               session: Bind = None, folds: int = 5) -> EmbeddingClassifier:
    """Fit on every labelled row the role can read (within filter=), one vector per row (the mean of its
    chunks)."""
    sklearn()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    column_ = label_column(index, label)
    with connection(index, session) as conn:
        _require_labels(conn, index, column_)
        vectors = stored_vectors(conn, index.name, _labelled_keys(index, column_, filter))
        labels = dict(conn.execute(select(stored_key(index), column_).where(column_.is_not(None))).all())
    keys = [key for key in vectors if key in labels]
    y = np.asarray([labels[key] for key in keys], dtype=object)
    classes, counts = np.unique(y.astype(str), return_counts=True)
    if len(classes) < 2:
        raise InvalidQuery(f"a classifier needs rows of at least two labels; the embedded labelled rows have "
                           f"{len(classes)} ({', '.join(classes)})")
    x = _unit(np.stack([vectors[key] for key in keys]))
    model = LogisticRegression(max_iter=2000)
    splits = min(folds, int(counts.min()))
    accuracy = None
    if splits >= 2:
        accuracy = float(cross_val_score(model, x, y, cv=StratifiedKFold(splits, shuffle=True, random_state=0)).mean())
    model.fit(x, y)
    return EmbeddingClassifier(index, model, model.classes_, accuracy, float(counts.max() / counts.sum()), len(keys),
                               session if not isinstance(session, (Session, Connection)) else None)
