-- One PostgreSQL server, one database per concern (run by the postgres image on first start).
CREATE DATABASE dagster;
CREATE DATABASE mlflow_training;
CREATE DATABASE mlflow_production;
CREATE DATABASE warehouse;
