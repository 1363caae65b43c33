-- Run once by the postgres image on first start (docker-entrypoint-initdb.d), as the owner `semsearch`.
-- Three roles: `semsearch` owns the schema and runs migrations, `app` is the application, `worker`
-- runs `semsearch worker`. `semsearch grant --app app --worker worker` (see docker-compose.yml) gives
-- the last two exactly what they need.
CREATE EXTENSION IF NOT EXISTS vector;
CREATE ROLE app LOGIN PASSWORD 'app';
CREATE ROLE worker LOGIN PASSWORD 'worker';
