"""Labels from the index, on a corpus with known groups built here: the standard library's docstrings,
labelled by their top-level module. kNN classify and the trained classifier must beat the majority
class by far; clusters are compared with the modules by the adjusted Rand index. Also: what the uses
do with bad input, the async twins, and two tenants under row-level security."""
import asyncio
from collections import Counter

import psycopg
import pytest
from sqlalchemy import String, Text, create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import async_sqlalchemy_url, sqlalchemy_url
from semsearch.demo import stdlib_docstrings
from semsearch.errors import InvalidQuery

from .helpers import drain
from .tenants import two_tenants

# Topical groups of top-level modules (the demo reads top-level modules and their members only).
GROUPS = {"files": "os posix shutil pathlib glob tempfile filecmp stat fnmatch io",
          "numbers": "math statistics cmath decimal fractions random numbers",
          "text": "string re textwrap difflib unicodedata codecs base64 binascii",
          "concurrency": "threading multiprocessing asyncio concurrent queue sched selectors",
          "introspection": "inspect ast dis typing types pydoc doctest symtable",
          "time": "time datetime calendar zoneinfo",
          "errors": "logging traceback warnings pdb faulthandler"}
GROUP_OF = {module: group for group, modules in GROUPS.items() for module in modules.split()}


class Base(DeclarativeBase):
    pass


class Doc(Base):
    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String)
    doc: Mapped[str] = mapped_column(Text)
    module: Mapped[str | None] = mapped_column(String)  # the module's group
    search = SearchIndex("doc")


@pytest.fixture
def labelled(db_url):
    docs = [d for d in stdlib_docstrings(20_000) if d["name"].split(".")[0] in GROUP_OF]
    engine = create_engine(sqlalchemy_url(db_url))
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        # every fifth row is left unlabelled: those are the rows to predict
        session.add_all(Doc(id=i, name=d["name"], doc=d["doc"], module=None if i % 5 == 0 else GROUP_OF[d["name"].split(".")[0]])
                        for i, d in enumerate(docs, 1))
        session.commit()
    drain(db_url, timeout=600)
    truth = {i: GROUP_OF[d["name"].split(".")[0]] for i, d in enumerate(docs, 1)}
    yield engine, truth
    engine.dispose()


def test_classify_classifier_and_clusters_against_known_groups(labelled):
    engine, truth = labelled
    hidden = [i for i in truth if i % 5 == 0]
    baseline = Counter(truth[i] for i in truth if i % 5).most_common(1)[0][1] / sum(1 for i in truth if i % 5)
    with Session(engine) as session:
        rows = [session.get(Doc, i) for i in hidden]
        knn = Doc.search.classify(rows, label=Doc.module, k=10, session=session)
        knn_accuracy = sum(p.label == truth[i] for p, i in zip(knn, hidden)) / len(hidden)
        assert all(0 < p.confidence <= 1 for p in knn)
        # filter= narrows the labelled rows that vote (and those a classifier learns from)
        narrowed = Doc.search.classify(rows[:5], label=Doc.module, filter=Doc.module.in_(["numbers", "time"]),
                                       session=session)
        assert {p.label for p in narrowed} <= {"numbers", "time"}
        model = Doc.search.classifier(label=Doc.module, session=session)
        predicted = model.predict(rows)
        trained_accuracy = sum(p == truth[i] for p, i in zip(predicted, hidden)) / len(hidden)
        probabilities = model.predict_proba([r.doc for r in rows[:3]])
        assert probabilities.shape == (3, len(model.classes_)) and abs(probabilities.sum(axis=1) - 1).max() < 1e-6
        found = Doc.search.clusters(len(GROUPS), session=session)
    from sklearn.metrics import adjusted_rand_score

    keys = sorted(found.assignment)
    ari = adjusted_rand_score([truth[k] for k in keys], [found.assignment[k] for k in keys])
    print(f"{len(truth)} docstrings in {len(GROUPS)} groups of modules; majority baseline {baseline:.3f}; kNN accuracy "
          f"{knn_accuracy:.3f}; logistic regression {trained_accuracy:.3f} (cross-validated {model.accuracy:.3f}); "
          f"k-means adjusted Rand index {ari:.3f}")
    assert model.baseline == pytest.approx(baseline)
    assert knn_accuracy > baseline + 0.3 and trained_accuracy > baseline + 0.3
    assert model.accuracy > baseline + 0.3
    assert ari > 0.1


def test_bad_input_says_what_to_do_and_changes_nothing(labelled):
    engine, _ = labelled

    class Other(Base):
        __tablename__ = "other"
        id: Mapped[int] = mapped_column(primary_key=True)
        label: Mapped[str]

    with Session(engine) as session:
        with pytest.raises(InvalidQuery, match="label must be a column of Doc .*, not Other.label"):
            Doc.search.classify(["text"], label=Other.label, session=session)
        with pytest.raises(InvalidQuery, match="empty text"):
            Doc.search.classify([" "], label=Doc.module, session=session)
        with pytest.raises(InvalidQuery, match="label must be a column of Doc"):
            Doc.search.classifier(label="module", session=session)
        session.execute(text("UPDATE docs SET module = NULL WHERE id > 0 AND false"))
        with pytest.raises(InvalidQuery, match="k must be"):
            Doc.search.classify(["text"], label=Doc.module, k=0, session=session)
        with pytest.raises(InvalidQuery, match="k must be"):
            Doc.search.outliers(k=0)
        with pytest.raises(InvalidQuery, match="per_document"):
            Doc.search.passages("x", per_document=0)
        with pytest.raises(InvalidQuery, match="mode must be"):
            Doc.search.passages("x", mode="fuzzy")
        with pytest.raises(InvalidQuery, match="at least one positive"):
            Doc.search.recommend([])
        with pytest.raises(InvalidQuery, match="k must be from 1 to the number of other rows"):
            session.execute(Doc.search.outliers(k=10**6)).all()
        session.rollback()
        with pytest.raises(InvalidQuery, match="method must be"):
            Doc.search.clusters(3, method="dbscan", session=session)
    with Session(engine) as session:
        before = session.execute(text("SELECT count(*) FROM docs WHERE module IS NOT NULL")).scalar()
        session.execute(text("UPDATE docs SET module = NULL"))
        with pytest.raises(InvalidQuery, match="no labelled rows"):
            Doc.search.classify(["some text"], label=Doc.module, session=session)
        with pytest.raises(InvalidQuery, match="no labelled rows"):
            Doc.search.classifier(label=Doc.module, session=session)
        session.rollback()
        assert session.execute(text("SELECT count(*) FROM docs WHERE module IS NOT NULL")).scalar() == before


def test_async_twins(labelled, db_url):
    engine, truth = labelled

    async def run():
        async_engine = create_async_engine(async_sqlalchemy_url(db_url))
        try:
            async with AsyncSession(async_engine) as session:
                groups = await Doc.search.aduplicates(0.99, session=session)
                labels = await Doc.search.aclassify(["Return the square root of x, a floating point number."], label=Doc.module,
                                                    session=session)
                clusters = await Doc.search.aclusters(3, session=async_engine)
                passages = (await session.execute(await Doc.search.apassages("parse an email header", limit=3))).all()
            return groups, labels, clusters, passages
        finally:
            await async_engine.dispose()

    groups, labels, clusters, passages = asyncio.run(run())
    assert labels[0].label == "numbers"
    assert len(clusters) == 3 and len(passages) == 3
    with Session(engine) as session:
        assert groups == Doc.search.duplicates(0.99, session=session)


def test_tenants_see_only_their_rows(db_url):
    rows_a = ("INSERT INTO docs (id, body) VALUES (1, 'Bake the sourdough bread in a hot oven for forty minutes.'), "
              "(2, 'Bake the sourdough bread in a hot oven for forty minutes!'), "
              "(3, 'The striker scored twice and the team won the cup final.'), "
              "(4, 'Whisk the eggs, flour and milk into a smooth pancake batter.')")
    rows_b = ("INSERT INTO docs (id, body) VALUES (11, 'Bake the sourdough bread in a hot oven for forty minutes.'), "
              "(12, 'A comet tail points away from the Sun.'), (13, 'The rover drilled into the Martian rock.'), "
              "(14, 'Astronomers find exoplanets by the dip in starlight.')")
    with two_tenants(db_url, "docs_search", rows_a, rows_b) as urls:
        drain(urls["worker"], timeout=300)

        class TenantDoc(DeclarativeBase):
            pass

        class Row(TenantDoc):
            __tablename__ = "docs"
            id: Mapped[int] = mapped_column(primary_key=True)
            tenant: Mapped[str]
            body: Mapped[str]
            search = SearchIndex("body", name="docs_search")

        engine = create_engine(sqlalchemy_url(urls["tenant_a"]))
        try:
            with Session(engine) as session:
                groups = Row.search.duplicates(0.9, session=session)
                assert [sorted(g.keys) for g in groups] == [[1, 2]]  # B's copy (11) is not A's to see
                near = [r.id for r, _ in session.execute(Row.search.similar(1, limit=10))]
                assert sorted(near) == [2, 3, 4]
                outliers = [r.id for r, _ in session.execute(Row.search.outliers(10, k=1))]
                assert sorted(outliers) == [1, 2, 3, 4]
                clusters = Row.search.clusters(2, session=session)
                assert sorted(k for c in clusters for k in c.keys) == [1, 2, 3, 4]
                passages = session.execute(Row.search.passages("comet", limit=10)).all()
                assert {p[0].id for p in passages} <= {1, 2, 3, 4}
                with pytest.raises(Exception, match="no row with key 11"):
                    session.execute(Row.search.similar(11)).all()
            # The filter narrows a tenant's rows further.
            with Session(engine) as session:
                groups = Row.search.duplicates(0.9, filter=Row.id != 2, session=session)
                assert groups == []
        finally:
            engine.dispose()
        with psycopg.connect(urls["tenant_b"]) as conn:
            pairs = conn.execute("SELECT key_a, key_b FROM semsearch.near_duplicates('docs_search', 0.9)").fetchall()
            assert pairs == []


def test_a_big_group_of_copies_is_found_whole(db_url):
    """60 copies of one text are one group with every pair, though one scan reads a few dozen rows."""
    engine = create_engine(sqlalchemy_url(db_url))
    Base.metadata.create_all(engine)
    others = [d["doc"] for d in stdlib_docstrings(40)]
    with Session(engine) as session:
        session.add_all(Doc(id=i, name="copy", doc="Return the number of items in a container.") for i in range(1, 61))
        session.add_all(Doc(id=100 + i, name="other", doc=text) for i, text in enumerate(others))
        session.commit()
    drain(db_url, timeout=300)
    with Session(engine) as session:
        groups = Doc.search.duplicates(0.99, session=session)
    engine.dispose()
    assert [sorted(g.keys) for g in groups] == [list(range(1, 61))]
    assert len(groups[0].pairs) == 60 * 59 // 2
