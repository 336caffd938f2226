-- setup
CREATE SCHEMA "{schema}";
CREATE TABLE "{schema}"."tt_a" ("id" integer NOT NULL, PRIMARY KEY ("id"));
-- workload
INSERT INTO "{schema}"."tt_a" ("id") VALUES (1), (2);
ALTER TABLE "{schema}"."tt_a" RENAME COLUMN "id" TO "k";
INSERT INTO "{schema}"."tt_a" ("k") VALUES (3);
SELECT pg_sleep(2);
