-- setup
CREATE SCHEMA "{schema}";
CREATE TABLE "{schema}"."tt_a" ("id" integer NOT NULL, "v" text, PRIMARY KEY ("id"));
CREATE TABLE "{schema}"."tt_b" ("id" integer NOT NULL, "v" text, PRIMARY KEY ("id"));
-- workload
INSERT INTO "{schema}"."tt_b" VALUES (1, 'b1');
DROP TABLE "{schema}"."tt_b";
SELECT pg_sleep(3);
INSERT INTO "{schema}"."tt_a" VALUES (1, 'a1');
