"""Every SearchIndex declared on a model class of this process (preload() asks which models to load)."""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .declaration import SearchIndex

_search_indexes: "weakref.WeakSet[SearchIndex[Any]]" = weakref.WeakSet()


def remember(index: SearchIndex[Any]) -> None:
    _search_indexes.add(index)


def declared_search_indexes() -> list[SearchIndex[Any]]:
    return [index for index in list(_search_indexes) if index.model_class is not None]
