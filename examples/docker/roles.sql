-- Run once by the postgres image on first start (docker-entrypoint-initdb.d), as the superuser.
-- The superuser does only what needs it: CREATE EXTENSION vector (not a trusted extension) and the roles.
-- `owner` (not a superuser) owns the application's tables and semsearch, and runs migrations; `app` is
-- the application; `worker` runs `semsearch worker`. `semsearch grant --app app --worker worker`, run
-- as `owner` (see docker-compose.yml), gives the last two exactly what they need.
CREATE EXTENSION IF NOT EXISTS vector;
CREATE ROLE owner LOGIN PASSWORD 'owner';
CREATE ROLE app LOGIN PASSWORD 'app';
CREATE ROLE worker LOGIN PASSWORD 'worker';
ALTER DATABASE app OWNER TO owner;
ALTER SCHEMA public OWNER TO owner;
