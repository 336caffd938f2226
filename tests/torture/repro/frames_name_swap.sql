-- setup
CREATE SCHEMA "{schema}";
CREATE TABLE "{schema}"."tt_a" ("id" integer NOT NULL, "v" text, PRIMARY KEY ("id"));
-- workload
CREATE TABLE "{schema}"."tt_b" ("id" integer NOT NULL, "v" text, PRIMARY KEY ("id"));
CREATE TABLE "{schema}"."tt_c" ("id" integer NOT NULL, "v" text, PRIMARY KEY ("id"));
INSERT INTO "{schema}"."tt_b" VALUES (1, 'b1');
INSERT INTO "{schema}"."tt_c" VALUES (1, 'c1');
SELECT pg_sleep(3);
ALTER TABLE "{schema}"."tt_b" RENAME TO "tt_x";
ALTER TABLE "{schema}"."tt_c" RENAME TO "tt_b";
ALTER TABLE "{schema}"."tt_x" RENAME TO "tt_c";
INSERT INTO "{schema}"."tt_b" VALUES (2, 'was c');
INSERT INTO "{schema}"."tt_c" VALUES (2, 'was b');
SELECT pg_sleep(3);
INSERT INTO "{schema}"."tt_b" VALUES (3, 'was c');
INSERT INTO "{schema}"."tt_c" VALUES (3, 'was b');
