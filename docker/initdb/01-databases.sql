-- Runs once, when the compose stack's PostgreSQL starts on an empty volume.
-- "airflow" (Airflow's metadata) is created by POSTGRES_DB; the warehouse and a source database are extra.
CREATE DATABASE warehouse;
CREATE DATABASE source;
