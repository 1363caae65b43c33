"""Two tenants under a real row-level security policy, as the security tests set them up: an owner (not
a superuser) installs semsearch with the CLI, the tenants share `docs` under `tenant = current_user`,
each gets an app grant, and a separate worker role indexes their rows."""
import subprocess
import sys
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg

CLI = [sys.executable, "-m", "semsearch.cli"]


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.split("@", 1)[1] if "@" in parts.netloc else parts.netloc
    return parts._replace(netloc=f"{user}@{host}").geturl()


@contextmanager
def two_tenants(db_url: str, index: str, rows_a: str, rows_b: str):
    """URLs of the roles owner, tenant_a, tenant_b and worker; rows_a and rows_b are the INSERTs each
    tenant runs (its rows get its name by default). The worker has not run yet."""
    dbname = urlsplit(db_url).path.lstrip("/")
    names = {k: f"{k}_{dbname[-8:]}" for k in ("owner", "tenant_a", "tenant_b", "worker")}
    with psycopg.connect(db_url, autocommit=True) as su:
        for role in names.values():
            su.execute(f"CREATE ROLE {role} LOGIN")
        su.execute(f"GRANT CREATE ON DATABASE {dbname} TO {names['owner']}")
        su.execute(f"GRANT CREATE ON SCHEMA public TO {names['owner']}")
        su.execute("CREATE EXTENSION vector")  # not a trusted extension: the one superuser step
    urls = {k: as_user(db_url, role) for k, role in names.items()}
    with psycopg.connect(urls["owner"], autocommit=True) as owner:
        owner.execute("CREATE TABLE docs (id int PRIMARY KEY, tenant name NOT NULL DEFAULT current_user, body text)")
        owner.execute("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
        owner.execute("CREATE POLICY tenant_rows ON docs USING (tenant = current_user) WITH CHECK (tenant = current_user)")
        owner.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON docs TO {names['tenant_a']}, {names['tenant_b']}")
    out = subprocess.run(CLI + ["install", "--url", urls["owner"]], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with psycopg.connect(urls["owner"], autocommit=True) as owner:
        owner.execute("SELECT semsearch.create_index(%s, 'docs', ARRAY['body'])", (index,))
    out = subprocess.run(CLI + ["grant", "--app", names["tenant_a"], "--app", names["tenant_b"],
                                "--worker", names["worker"], "--url", urls["owner"]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # The tenants write their table without any right on semsearch's own tables.
    for tenant, rows in (("tenant_a", rows_a), ("tenant_b", rows_b)):
        with psycopg.connect(urls[tenant], autocommit=True) as conn:
            conn.execute(rows)
    try:
        yield urls
    finally:
        with psycopg.connect(db_url, autocommit=True) as su:
            for role in names.values():
                su.execute(f"DROP OWNED BY {role} CASCADE")
            for role in names.values():
                su.execute(f"DROP ROLE {role}")
