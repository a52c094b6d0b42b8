-- rankstream access control for a ClickHouse server (>= 25.8), GENERATED from infra/clickhouse/access.yaml by
--   rankstream store rbac infra/clickhouse/access.yaml > infra/clickhouse/rbac.sql
-- (edit the config, not this file). chDB has no SQL access management, so this is for servers only;
-- tests/integration/sinks/test_schema.py checks that every statement parses (formatQuery) and that every
-- row-policy condition runs against the real tables.
--
-- Apply as an administrator, after `rankstream store migrate --dsn http://admin@host:8123`:
--   clickhouse-client --host HOST --user admin --multiquery < infra/clickhouse/rbac.sql
-- (requires access_management for the admin user).
--
-- Model: row policies are permissive per role and combine with OR; once a table has any
-- row policy, a user that none of them covers sees no rows. So the sink and the
-- administrators get an explicit "all rows" policy, and each team role sees its own rows.

-- Read-only access to the schema, shared by every team role.
CREATE ROLE IF NOT EXISTS rankstream_reader;
GRANT SELECT ON rankstream.* TO rankstream_reader;

-- The sink's writer: inserts and migrations, sees all rows.
CREATE ROLE IF NOT EXISTS rankstream_writer;
GRANT SELECT, INSERT, CREATE TABLE, ALTER TABLE, CREATE DATABASE ON rankstream.* TO rankstream_writer;
CREATE USER IF NOT EXISTS rankstream_sink IDENTIFIED WITH sha256_password BY 'change-me-sink' HOST LOCAL;
GRANT rankstream_writer TO rankstream_sink;
ALTER USER rankstream_sink DEFAULT ROLE rankstream_writer;

CREATE ROW POLICY IF NOT EXISTS all_rows ON rankstream.metrics FOR SELECT USING 1 TO rankstream_writer;
CREATE ROW POLICY IF NOT EXISTS all_rows ON rankstream.events FOR SELECT USING 1 TO rankstream_writer;
CREATE ROW POLICY IF NOT EXISTS all_rows ON rankstream.steps FOR SELECT USING 1 TO rankstream_writer;
CREATE ROW POLICY IF NOT EXISTS all_rows ON rankstream.step_metrics FOR SELECT USING 1 TO rankstream_writer;
CREATE ROW POLICY IF NOT EXISTS all_rows ON rankstream.alerts FOR SELECT USING 1 TO rankstream_writer;
CREATE ROW POLICY IF NOT EXISTS all_rows ON rankstream.runs FOR SELECT USING 1 TO rankstream_writer;

-- Team "vision": a role that sees only its rows, and read-only users holding it.
CREATE ROLE IF NOT EXISTS team_vision;
GRANT rankstream_reader TO team_vision;
CREATE ROW POLICY IF NOT EXISTS team_vision ON rankstream.metrics FOR SELECT USING team = 'vision' TO team_vision;
CREATE ROW POLICY IF NOT EXISTS team_vision ON rankstream.events FOR SELECT USING team = 'vision' TO team_vision;
CREATE ROW POLICY IF NOT EXISTS team_vision ON rankstream.steps FOR SELECT USING team = 'vision' TO team_vision;
CREATE ROW POLICY IF NOT EXISTS team_vision ON rankstream.step_metrics FOR SELECT USING team = 'vision' TO team_vision;
CREATE ROW POLICY IF NOT EXISTS team_vision ON rankstream.alerts FOR SELECT USING team = 'vision' TO team_vision;
CREATE ROW POLICY IF NOT EXISTS team_vision ON rankstream.runs FOR SELECT USING team = 'vision' TO team_vision;
CREATE USER IF NOT EXISTS vision_ro IDENTIFIED WITH sha256_password BY 'change-me-vision' SETTINGS readonly = 1;
GRANT team_vision TO vision_ro;
ALTER USER vision_ro DEFAULT ROLE team_vision;

-- Team "nlp": a role that sees only its rows, and read-only users holding it.
CREATE ROLE IF NOT EXISTS team_nlp;
GRANT rankstream_reader TO team_nlp;
CREATE ROW POLICY IF NOT EXISTS team_nlp ON rankstream.metrics FOR SELECT USING team = 'nlp' TO team_nlp;
CREATE ROW POLICY IF NOT EXISTS team_nlp ON rankstream.events FOR SELECT USING team = 'nlp' TO team_nlp;
CREATE ROW POLICY IF NOT EXISTS team_nlp ON rankstream.steps FOR SELECT USING team = 'nlp' TO team_nlp;
CREATE ROW POLICY IF NOT EXISTS team_nlp ON rankstream.step_metrics FOR SELECT USING team = 'nlp' TO team_nlp;
CREATE ROW POLICY IF NOT EXISTS team_nlp ON rankstream.alerts FOR SELECT USING team = 'nlp' TO team_nlp;
CREATE ROW POLICY IF NOT EXISTS team_nlp ON rankstream.runs FOR SELECT USING team = 'nlp' TO team_nlp;
CREATE USER IF NOT EXISTS nlp_ro IDENTIFIED WITH sha256_password BY 'change-me-nlp' SETTINGS readonly = 1;
GRANT team_nlp TO nlp_ro;
ALTER USER nlp_ro DEFAULT ROLE team_nlp;
