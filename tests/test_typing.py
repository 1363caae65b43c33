"""The public API as a user's type checker sees it: `mypy --strict` on an application file (semsearch
ships py.typed), so its queries' rows, the Worker and install/preload stay typed."""
import subprocess
import sys
import textwrap

APPLICATION = textwrap.dedent('''
    import numpy as np
    import numpy.typing as npt
    from sqlalchemy import Select, create_engine
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
    from typing_extensions import assert_type

    import semsearch
    from semsearch import SearchIndex, Worker


    class Base(DeclarativeBase):
        pass


    class Article(Base):
        __tablename__ = "articles"
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant_id: Mapped[int]
        title: Mapped[str]
        body: Mapped[str | None]
        search = SearchIndex("title", "body", weights={"title": 2.0})


    # hybrid(arm_scores=True): each arm's rank and score too
    ArmScored = Select[Article, float, int | None, float | None, int | None, float | None]


    def search(session: Session) -> list[str]:
        vector = Article.search.embed_query("parse command line options")
        assert_type(vector, npt.NDArray[np.float32])
        hybrid = Article.search.hybrid("parse options", limit=5, filter=Article.tenant_id == 7, fusion="rrf")
        assert_type(hybrid, Select[Article, float])
        assert_type(Article.search.semantic(vector=vector, limit=3), Select[Article, float])
        assert_type(Article.search.keyword("parse", syntax="websearch"), Select[Article, float])
        assert_type(Article.search.hybrid("parse", arm_scores=True), ArmScored)
        found = []
        for article, score in session.execute(hybrid.where(Article.title != "")):
            assert_type(article, Article)
            assert_type(score, float)
            found.append(f"{score:.3f} {article.title}")
        return found


    def beyond_search(session: Session) -> None:
        passages = Article.search.passages("parse options", limit=3, highlight=True, per_document=1)
        assert_type(passages, Select[Article, str, float, int, int | None, int | None])
        for article, passage, score, chunk_index, start, end in session.execute(passages):
            assert_type(passage, str)
            assert_type(start, int | None)
        assert_type(Article.search.similar(1, limit=5), Select[Article, float])
        assert_type(Article.search.recommend([1, 2], [3]), Select[Article, float])
        assert_type(Article.search.outliers(20, k=10), Select[Article, float])
        for group in Article.search.duplicates(0.95, session=session):
            print(group.keys, group.pairs)
        for cluster in Article.search.clusters(5, session=session):
            print(cluster.size, cluster.keywords)
        model = Article.search.classifier(label=Article.tenant_id, session=session)
        print(model.predict(["some text"]), model.accuracy)


    async def asearch(session: AsyncSession) -> list[tuple[Article, float]]:
        hybrid = await Article.search.ahybrid("parse options", semantic_weight=2.0)
        assert_type(hybrid, Select[Article, float])
        assert_type(await Article.search.ahybrid("parse", arm_scores=True), ArmScored)
        semantic = await Article.search.asemantic("parse options", limit=3)
        keyword = await Article.search.akeyword("parse", filter=Article.title.startswith("a"))
        rows: list[tuple[Article, float]] = []
        for query in (hybrid, semantic, keyword):
            rows.extend((await session.execute(query)).tuples().all())
        return rows


    def main(url: str) -> None:
        engine = create_engine(url)
        semsearch.install(engine)
        semsearch.preload(engine, "all-MiniLM-L6-v2")
        Base.metadata.create_all(engine)
        Worker(url, indexes=[Article.search.name], batch_size=32).run(drain=True)
        with Session(engine) as session:
            print(search(session))


    async def amain(url: str) -> None:
        engine = create_async_engine(url)
        await semsearch.ainstall(engine)
        await semsearch.apreload(engine)
        async with AsyncSession(engine) as session:
            print(await asearch(session))
''')


def mypy_strict(directory, *files):
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(directory / ".mypy_cache"),
                           *files], cwd=directory, capture_output=True, text=True, timeout=600)


def test_public_api_passes_mypy_strict_for_users(tmp_path):
    (tmp_path / "application.py").write_text(APPLICATION)
    checked = mypy_strict(tmp_path, "application.py")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # The check can fail: query text that is not a string is a type error.
    (tmp_path / "mistaken.py").write_text(APPLICATION + "\n\nArticle.search.hybrid(42)\n")
    checked = mypy_strict(tmp_path, "mistaken.py")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert 'error: No overload variant of "hybrid" of "SearchIndex" matches argument type "int"' in checked.stdout
    assert "Found 1 error in 1 file" in checked.stdout
