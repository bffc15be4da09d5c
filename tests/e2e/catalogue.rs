//! The check catalogue: for each check, an old cluster of a major where the
//! problem can exist makes it fail with the right finding and objects; the
//! clean case is every pair in check_pairs.rs, where all of them pass.

use crate::support::*;

/// Sets the old cluster up with `sql`, runs check, returns the run.
fn check_with(old_major: u32, new_major: u32, sql: &str) -> Option<Run> {
    let mut pair = Pair::new(old_major, new_major)?;
    pair.old.with_running(|c| c.sql("postgres", sql));
    let (old_before, new_before) = pair.snapshots();
    let run = pair.check(&[]);
    crate::json_schema::validate(&run.events);
    // Catalog checks start the servers: only their bookkeeping may change.
    crate::proof::assert_data_files_untouched(&old_before, &snapshot(&pair.old.datadir));
    crate::proof::assert_data_files_untouched(&new_before, &snapshot(&pair.new.datadir));
    Some(run)
}

/// Upgrades (link) and returns the reindex_after_upgrade.sql it wrote.
fn upgrade_for_reindex_script(pair: &Pair) -> String {
    let mut args = pair.dir_args();
    args.extend(["--link".into(), "--json".into()]);
    let run = pair.run(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    std::fs::read_to_string(
        pair.new
            .datadir
            .join("pg_migrate.d/reindex_after_upgrade.sql"),
    )
    .unwrap()
}

/// Runs the upgrade's reindex_after_upgrade.sql on the (running) new
/// cluster as the next steps say (plain `psql -f`: the script itself stops
/// at the first error).
fn run_reindex_script(pair: &Pair) {
    let script = pair
        .new
        .datadir
        .join("pg_migrate.d/reindex_after_upgrade.sql");
    assert!(
        std::fs::read_to_string(&script)
            .unwrap()
            .contains("\n\\set ON_ERROR_STOP on\n"),
        "the script must stop at the first error"
    );
    run_ok(
        as_test_user(pair.new.bindir.join("psql"))
            .args(["-X", "-q", "-h"])
            .arg(&pair.new.sockdir)
            .args(["-p", &pair.new.port.to_string(), "-d", "postgres", "-f"])
            .arg(
                pair.new
                    .datadir
                    .join("pg_migrate.d/reindex_after_upgrade.sql"),
            ),
    );
}

fn names(run: &Run, id: &str) -> Vec<String> {
    run.check(id)["objects"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| o["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn reg_type_columns_directly_and_through_domains_arrays_and_composites() {
    let Some(run) = check_with(
        15,
        18,
        "CREATE TABLE r (p regproc, ops regoper[], fine regclass, t regtype);
         CREATE DOMAIN procs AS regprocedure;
         CREATE TYPE pair AS (a int, b regnamespace);
         CREATE TABLE r2 (d procs, c pair);",
    ) else {
        return;
    };
    assert_refused(&run, "old-reg-types", "reg_type_columns");
    let found = names(&run, "old-reg-types");
    assert_eq!(
        found,
        ["public.r.ops", "public.r.p", "public.r2.c", "public.r2.d"],
        "regclass and regtype are fine"
    );
    assert_eq!(
        run.check("old-reg-types")["objects"][0]["database"],
        "postgres"
    );
    assert_eq!(run.check("old-reg-types")["objects"][0]["schema"], "public");
}

#[test]
fn aclitem_columns_before_16() {
    let Some(run) = check_with(15, 18, "CREATE TABLE acl (a aclitem, b aclitem[]);") else {
        return;
    };
    assert_refused(&run, "old-aclitem-columns", "aclitem_columns");
    assert_eq!(
        names(&run, "old-aclitem-columns"),
        ["public.acl.a", "public.acl.b"]
    );
    // From 16 on the format is the same: the rule does not apply.
    let Some(run) = check_with(16, 18, "CREATE TABLE acl (a aclitem);") else {
        return;
    };
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(run.check("old-aclitem-columns")["message"]
        .as_str()
        .unwrap()
        .contains("does not concern"));
}

/// From 10 and 11: a table WITH OIDS, a column of sql_identifier, columns
/// of the types 12 removed and a domain over one (which would fail the
/// restore even once no column uses it), each refused by name with both
/// clusters unchanged; after the documented fixes the upgrade goes through.
#[test]
fn what_12_removed_is_refused_from_10_and_11_then_fixed_and_upgraded() {
    for old in [10, 11] {
        let Some(mut pair) = Pair::new(old, 18) else {
            return;
        };
        pair.old.with_running(|c| {
            c.sql(
                "postgres",
                "CREATE TABLE legacy (id int) WITH OIDS; INSERT INTO legacy VALUES (1);
                 CREATE TABLE names (n information_schema.sql_identifier);
                 INSERT INTO names VALUES ('x');
                 CREATE DOMAIN stamp AS abstime;
                 CREATE TABLE times (a stamp, r reltime, t tinterval);
                 INSERT INTO times VALUES (now(), '1 day', NULL);",
            )
        });
        let (old_before, new_before) = pair.snapshots();
        let run = pair.check(&[]);
        crate::json_schema::validate(&run.events);
        assert_refused(&run, "old-tables-with-oids", "tables_with_oids");
        assert_eq!(
            names(&run, "old-tables-with-oids"),
            ["public.legacy"],
            "{old}"
        );
        assert_refused(&run, "old-sql-identifier-columns", "sql_identifier_columns");
        assert_eq!(
            names(&run, "old-sql-identifier-columns"),
            ["public.names.n"],
            "{old}"
        );
        assert_refused(&run, "old-removed-time-types", "removed_type_columns");
        assert_eq!(
            names(&run, "old-removed-time-types"),
            [
                "public.stamp",
                "public.times.a",
                "public.times.r",
                "public.times.t"
            ],
            "{old}"
        );
        crate::proof::assert_data_files_untouched(&old_before, &snapshot(&pair.old.datadir));
        crate::proof::assert_data_files_untouched(&new_before, &snapshot(&pair.new.datadir));

        pair.old.with_running(|c| {
            c.sql(
                "postgres",
                "ALTER TABLE legacy SET WITHOUT OIDS;
                 ALTER TABLE names ALTER COLUMN n TYPE text;
                 ALTER TABLE times ALTER COLUMN a TYPE timestamptz USING a::abstime::timestamptz,
                   ALTER COLUMN r TYPE interval, DROP COLUMN t;
                 DROP DOMAIN stamp;",
            )
        });
        let mut args = pair.dir_args();
        args.extend(["--link".into(), "--verify".into(), "--json".into()]);
        let run = pair.run(&args);
        assert_eq!(run.status, 0, "{old}: {}", run.stderr);
        pair.new.with_running(|c| {
            // A row written WITH OIDS, read after SET WITHOUT OIDS and the upgrade.
            let row = c
                .client("postgres")
                .query_one("SELECT n || ' ' || (SELECT id FROM legacy) FROM names", &[])
                .unwrap();
            assert_eq!(row.get::<_, String>(0), "x 1");
        });
    }
}

/// Columns of a system catalog's or an information_schema view's row type
/// (whose OIDs differ in the new major), and a reg* value reached through a
/// view's row type: each refused by name.
#[test]
fn system_row_types_and_reg_types_through_a_view_row_type() {
    let Some(run) = check_with(
        15,
        18,
        "CREATE TABLE snap (c information_schema.columns, k pg_class);
         CREATE VIEW vreg AS SELECT 'sum(int4)'::regprocedure AS p;
         CREATE TABLE holds (v vreg);",
    ) else {
        return;
    };
    assert_refused(
        &run,
        "old-system-composite-columns",
        "system_composite_columns",
    );
    assert_eq!(
        names(&run, "old-system-composite-columns"),
        ["public.snap.c", "public.snap.k"]
    );
    assert_refused(&run, "old-reg-types", "reg_type_columns");
    assert_eq!(names(&run, "old-reg-types"), ["public.holds.v"]);
}

#[test]
fn postfix_operators_before_14() {
    let Some(run) = check_with(
        13,
        18,
        "CREATE OPERATOR !!! (LEFTARG = bigint, FUNCTION = numeric_fac);",
    ) else {
        return;
    };
    assert_refused(&run, "old-postfix-operators", "postfix_operators");
    assert_eq!(
        names(&run, "old-postfix-operators"),
        ["public.!!! (bigint, NONE)"]
    );
}

#[test]
fn aggregates_on_old_polymorphic_array_functions_before_14() {
    let Some(run) = check_with(
        12,
        18,
        "CREATE AGGREGATE array_accum(anyelement) (SFUNC = array_append, STYPE = anyarray, INITCOND = '{}');",
    ) else {
        return;
    };
    assert_refused(
        &run,
        "old-polymorphic-functions",
        "incompatible_polymorphics",
    );
    assert_eq!(
        names(&run, "old-polymorphic-functions"),
        ["public.array_accum(anyelement)"]
    );
}

#[test]
fn user_encoding_conversions_before_14() {
    let Some(run) = check_with(
        12,
        18,
        "CREATE CONVERSION my_latin1 FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8;",
    ) else {
        return;
    };
    assert_refused(
        &run,
        "old-encoding-conversions",
        "user_encoding_conversions",
    );
    assert_eq!(
        names(&run, "old-encoding-conversions"),
        ["public.my_latin1"]
    );
}

/// The rules older majors share with 12 and later find their objects in
/// the catalogs of 10 (no prokind) and 11 as well.
#[test]
fn the_shared_rules_find_their_objects_in_10_and_11_catalogs() {
    for old in [10, 11] {
        let Some(run) = check_with(
            old,
            18,
            "CREATE TABLE r (p regproc, fine regclass);
             CREATE TABLE acl (a aclitem);
             CREATE TABLE snap (k pg_class);
             CREATE OPERATOR !!! (LEFTARG = bigint, PROCEDURE = numeric_fac);
             CREATE AGGREGATE array_accum(anyelement) (SFUNC = array_append, STYPE = anyarray, INITCOND = '{}');
             CREATE CONVERSION my_latin1 FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8;",
        ) else {
            return;
        };
        let expected: [(&str, &str, &[&str]); 6] = [
            ("old-reg-types", "reg_type_columns", &["public.r.p"]),
            // pg_class's row holds relacl, an aclitem[].
            (
                "old-aclitem-columns",
                "aclitem_columns",
                &["public.acl.a", "public.snap.k"],
            ),
            (
                "old-system-composite-columns",
                "system_composite_columns",
                &["public.snap.k"],
            ),
            (
                "old-postfix-operators",
                "postfix_operators",
                &["public.!!! (bigint, NONE)"],
            ),
            (
                "old-polymorphic-functions",
                "incompatible_polymorphics",
                &["public.array_accum(anyelement)"],
            ),
            (
                "old-encoding-conversions",
                "user_encoding_conversions",
                &["public.my_latin1"],
            ),
        ];
        for (id, code, objects) in expected {
            assert_refused(&run, id, code);
            assert_eq!(names(&run, id), objects, "{old}: {id}");
        }
    }
}

#[test]
fn roles_named_like_system_roles() {
    // CREATE ROLE refuses pg_* names; a superuser editing the catalog does not.
    let Some(run) = check_with(
        15,
        18,
        "CREATE ROLE sneaky; UPDATE pg_authid SET rolname = 'pg_sneaky' WHERE rolname = 'sneaky';",
    ) else {
        return;
    };
    assert_refused(&run, "old-reserved-role-names", "reserved_role_names");
    let role = &run.check("old-reserved-role-names")["objects"][0];
    assert_eq!(role["name"], "pg_sneaky");
    assert!(role.get("database").is_none(), "roles are cluster-wide");
}

/// 15 from Debian is built with ICU, lz4 and libxml; the 18 install has
/// none of them; 17 has lz4 and libxml but no ICU.
#[test]
fn build_capabilities_the_new_installation_lacks() {
    let sql = "CREATE COLLATION german (provider = icu, locale = 'de');
               CREATE TABLE words (w text COLLATE german);
               CREATE TABLE packed (t text COMPRESSION lz4);
               CREATE TABLE docs (d xml);";
    let Some(run) = check_with(15, 18, sql) else {
        return;
    };
    assert_refused(&run, "new-icu", "icu_unavailable");
    assert_refused(&run, "new-lz4", "lz4_unavailable");
    // xml values carry over unparsed: only a warning (below, what refuses).
    assert_eq!(run.check("new-xml")["status"], "warn");
    assert_eq!(run.check("new-xml")["code"], "xml_without_libxml");
    assert!(names(&run, "new-icu").contains(&"public.german".to_string()));
    assert!(names(&run, "new-icu")
        .iter()
        .any(|n| n.starts_with("public.words.w")));
    assert_eq!(names(&run, "new-lz4"), ["public.packed.t"]);
    assert_eq!(names(&run, "new-xml"), ["public.docs.d"]);
    let Some(run) = check_with(15, 17, sql) else {
        return;
    };
    assert_refused(&run, "new-icu", "icu_unavailable");
    assert_eq!(run.check("new-lz4")["status"], "pass");
    assert_eq!(run.check("new-xml")["status"], "pass");
}

/// xml without libxml (18's build): stored values move as files and read
/// back unchanged, as with pg_upgrade; only objects whose restore parses an
/// xml value (a default, a constraint, a view with an xml literal) refuse.
#[test]
fn xml_is_refused_only_where_the_restore_must_parse_it() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql(
        "postgres",
        "CREATE TABLE docs (id int, d xml);
         INSERT INTO docs VALUES (1, '<a x=\"1\">text &amp; more</a>'), (2, NULL), (3, 'just text');
         CREATE TABLE stamped (d xml DEFAULT '<new/>');
         CREATE VIEW greeting AS SELECT '<hello/>'::xml AS x;
         CREATE TABLE checked (d xml CHECK (d::text <> '<bad/>'::xml::text));
         CREATE VIEW lazy AS SELECT '<later/>'::text::xml AS x;
         CREATE FUNCTION tagged(x xml DEFAULT '<d/>') RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION keep(xml, xml) RETURNS xml LANGUAGE sql AS 'SELECT $1';
         CREATE AGGREGATE firstxml(xml) (SFUNC = keep, STYPE = xml, INITCOND = '<i/>');",
    );
    pair.old.stop();
    let run = pair.check(&[]);
    assert_refused(&run, "new-xml", "xml_unavailable");
    let found = names(&run, "new-xml");
    for expected in [
        "public.stamped.d (default)",
        "public.greeting",
        "public.checked_d_check on public.checked",
        "tagged(xml) (argument default)",
        "firstxml(xml)",
    ] {
        assert!(
            found.iter().any(|n| n.contains(expected)),
            "{expected} not in {found:?}"
        );
    }
    // A cast from text is evaluated when used, not when restored; a plain
    // column is no expression at all.
    assert!(
        !found
            .iter()
            .any(|n| n.contains("lazy") || n.contains("docs")),
        "{found:?}"
    );
    pair.old.start();
    pair.old.sql(
        "postgres",
        "DROP TABLE stamped, checked; DROP VIEW greeting;
         DROP FUNCTION tagged(xml); DROP AGGREGATE firstxml(xml);",
    );
    let before = crate::proof::capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let run = pair.check(&[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.check("new-xml")["code"], "xml_without_libxml");
    // A dump and reload parses every stored value: refused there.
    let run = pair.check(&["--method", "dump"]);
    assert_refused(&run, "new-xml", "xml_unavailable");
    assert_eq!(names(&run, "new-xml"), ["public.docs.d"]);
    let mut args: Vec<std::ffi::OsString> = vec!["--link".into(), "--json".into()];
    args.extend(pair.dir_args());
    let upgraded = pair.run(&args);
    assert_eq!(upgraded.status, 0, "{}", upgraded.stderr);
    pair.new.start();
    crate::proof::assert_same_state(
        &before,
        &crate::proof::capture(&pair.new, &pair.new.bindir),
        (15, 18),
        "xml carried without libxml",
    );
    let text: String = pair
        .new
        .client("postgres")
        .query_one("SELECT d::text FROM docs WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(text, "<a x=\"1\">text &amp; more</a>");
    // The consequence the warning names: new xml values cannot be parsed.
    let err = pair
        .new
        .client("postgres")
        .batch_execute("INSERT INTO docs VALUES (4, '<b/>')")
        .unwrap_err();
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("unsupported XML feature")),
        "{err}"
    );
    pair.new.stop();
}

#[test]
fn default_lz4_compression_counts_as_use() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    let conf = pair.old.datadir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\ndefault_toast_compression = lz4\n");
    std::fs::write(&conf, text).unwrap();
    pair.old.with_running(|_| ());
    let run = pair.check(&[]);
    assert_refused(&run, "new-lz4", "lz4_unavailable");
    assert_eq!(run.check("new-lz4")["objects"][0]["kind"], "setting");
}

/// pgcrypto needs OpenSSL, which 18's build lacks: its extension and its
/// library are both missing there.
#[test]
fn extensions_and_libraries_the_new_installation_lacks() {
    let Some(run) = check_with(
        15,
        18,
        "CREATE EXTENSION pgcrypto; CREATE EXTENSION hstore;",
    ) else {
        return;
    };
    // The extension's files are missing: a warning (its objects carry over
    // without them); its library is what refuses.
    assert_eq!(run.check("new-extensions")["status"], "warn");
    assert_eq!(run.check("new-extensions")["code"], "extension_missing");
    let missing = names(&run, "new-extensions");
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(missing[0].starts_with("pgcrypto "), "{missing:?}");
    assert_refused(&run, "new-libraries", "library_missing");
    let message = run.check("new-libraries")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("$libdir/pgcrypto") && !message.contains("hstore"),
        "{message}"
    );
    assert!(
        names(&run, "new-libraries")
            .iter()
            .any(|n| n.contains(".digest(")),
        "the functions needing it are named"
    );
    // hstore is available in both: the extension and its library pass on 15 -> 17.
    let Some(run) = check_with(15, 17, "CREATE EXTENSION hstore;") else {
        return;
    };
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(run.check("new-libraries")["message"]
        .as_str()
        .unwrap()
        .starts_with("the 1 shared library the old cluster needs loads"));
}

/// A library only the old cluster's shared_preload_libraries names: the
/// upgrade needs it for nothing (the new cluster keeps its own settings), so
/// a warning; with --carry-config the setting would come over and keep the
/// new cluster from starting, so a refusal.
#[test]
fn shared_preload_libraries_must_load_in_the_new_installation_only_if_carried() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    let conf = pair.old.datadir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    // A library 15's Debian build has and 18's build lacks.
    text.push_str("\nshared_preload_libraries = 'pgcrypto'\n");
    std::fs::write(&conf, text).unwrap();
    pair.old.with_running(|_| ());
    let run = pair.check(&[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let check = run.check("new-libraries");
    assert_eq!(check["status"], "warn", "{check}");
    assert_eq!(check["code"], "preload_library_missing", "{check}");
    assert!(check["objects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["kind"] == "setting"));
    let run = pair.check(&["--carry-config"]);
    assert_refused(&run, "new-libraries", "library_missing");
    // The upgrade itself goes through.
    let mut args: Vec<std::ffi::OsString> = vec!["--link".into(), "--json".into()];
    args.extend(pair.dir_args());
    let upgraded = pair.run(&args);
    assert_eq!(upgraded.status, 0, "{}", upgraded.stderr);
}

/// The rules for sql_identifier, abstime, reltime, tinterval and unknown
/// columns concern sources of 11 and older, which no test here can run. The
/// query they share with the reg* and aclitem rules is proven on the closest
/// real case: a 12 cluster whose table uses information_schema.sql_identifier.
#[test]
fn the_column_type_query_finds_sql_identifier_columns() {
    let Some(mut pair) = Pair::new(12, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql(
        "postgres",
        "CREATE TABLE meta (n information_schema.sql_identifier, ns information_schema.sql_identifier[]);",
    );
    let sql = pgm_verifier::columns_using(
        &[("information_schema", "sql_identifier")],
        pgm_cluster::PgMajor::new(12),
    );
    let found: Vec<String> = pair
        .old
        .client("postgres")
        .query(sql.as_str(), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(1))
        .collect();
    pair.old.stop();
    assert_eq!(found, ["public.meta.n", "public.meta.ns"]);
}

#[test]
fn nullable_children_of_not_null_parents_before_18() {
    // Only a catalog edit (or an old bug) makes this state; 18 cannot restore it.
    let Some(run) = check_with(
        15,
        18,
        "CREATE TABLE parent (c int NOT NULL);
         CREATE TABLE child () INHERITS (parent);
         UPDATE pg_attribute SET attnotnull = false WHERE attrelid = 'child'::regclass AND attname = 'c';",
    ) else {
        return;
    };
    assert_refused(&run, "old-not-null-inheritance", "inconsistent_not_null");
    assert_eq!(names(&run, "old-not-null-inheritance"), ["public.child.c"]);
}

fn append_conf(cluster: &Cluster, lines: &str) {
    let conf = cluster.datadir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(lines);
    std::fs::write(&conf, text).unwrap();
}

/// Three slots on a 17 cluster: one invalidated (its WAL removed past
/// max_slot_wal_keep_size), one whose consumer has not received the last
/// changes, one current. Slots of 17 are carried: only the two that cannot
/// be are refused, and the new cluster's settings must make room.
#[test]
fn logical_slots_invalid_behind_and_where_the_new_cluster_lacks_room() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    append_conf(&pair.old, "\nwal_level = logical\n");
    pair.old.with_running(|c| {
        // ALTER SYSTEM refuses to share a transaction with other statements.
        c.sql(
            "postgres",
            "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        );
        c.sql("postgres", "SELECT pg_reload_conf()");
        c.sql(
            "postgres",
            "SELECT pg_create_logical_replication_slot('lost', 'pgoutput');
             CREATE TABLE t (x int);",
        );
        // Two segment switches and a checkpoint put the slot's WAL past the limit.
        for _ in 0..2 {
            c.sql(
                "postgres",
                "INSERT INTO t SELECT generate_series(1, 1000); SELECT pg_switch_wal();",
            );
        }
        c.sql("postgres", "CHECKPOINT;");
        c.sql("postgres", "ALTER SYSTEM RESET max_slot_wal_keep_size");
        c.sql(
            "postgres",
            "SELECT pg_reload_conf();
             SELECT pg_create_logical_replication_slot('behind', 'pgoutput');",
        );
        // A slot is made in a transaction of its own, after the write.
        c.sql("postgres", "INSERT INTO t VALUES (1)");
        c.sql(
            "postgres",
            "SELECT pg_create_logical_replication_slot('current', 'pgoutput')",
        );
    });
    let (old_before, new_before) = pair.snapshots();
    let run = pair.check(&[]);
    crate::json_schema::validate(&run.events);
    assert_eq!(run.check("old-logical-slots")["status"], "pass");
    assert_refused(&run, "old-logical-slots-usable", "logical_slot_unusable");
    assert_eq!(
        names(&run, "old-logical-slots-usable"),
        [
            "behind (has not consumed all WAL)",
            "lost (invalidated: wal_removed)"
        ]
    );
    let settings = run.check("new-logical-slots");
    assert_eq!(settings["status"], "fail", "{settings}");
    assert_eq!(settings["code"], "new_wal_level_not_logical", "{settings}");
    crate::proof::assert_data_files_untouched(&old_before, &snapshot(&pair.old.datadir));
    crate::proof::assert_data_files_untouched(&new_before, &snapshot(&pair.new.datadir));

    append_conf(
        &pair.new,
        "\nwal_level = logical\nmax_replication_slots = 2\n",
    );
    let run = pair.check(&[]);
    let settings = run.check("new-logical-slots");
    assert_eq!(settings["code"], "too_few_replication_slots", "{settings}");
    assert!(
        settings["message"]
            .as_str()
            .unwrap()
            .contains("fewer than the old cluster's 3"),
        "{settings}"
    );
    append_conf(&pair.new, "\nmax_replication_slots = 3\n");
    let run = pair.check(&[]);
    assert_eq!(
        run.check("new-logical-slots")["status"],
        "pass",
        "{}",
        run.stderr
    );

    // A live check cannot ask whether a slot caught up (the server still
    // writes WAL): only the invalid slot is reported.
    pair.old.start();
    let live = pair.check(&[]);
    pair.old.stop();
    assert_eq!(
        names(&live, "old-logical-slots-usable"),
        ["lost (invalidated: wal_removed)"],
        "{}",
        live.stderr
    );
}

/// A subscription whose replication origin was dropped has lost its place.
#[test]
fn subscriptions_without_their_replication_origin() {
    let Some(run) = check_with(
        17,
        18,
        "CREATE SUBSCRIPTION kept CONNECTION 'host=/nonexistent dbname=nowhere' PUBLICATION pub
           WITH (connect = false, enabled = false, create_slot = false, slot_name = NONE);
         CREATE SUBSCRIPTION orphan CONNECTION 'host=/nonexistent dbname=nowhere' PUBLICATION pub
           WITH (connect = false, enabled = false, create_slot = false, slot_name = NONE);
         SELECT pg_replication_origin_drop('pg_' || oid) FROM pg_subscription WHERE subname = 'orphan';",
    ) else {
        return;
    };
    assert_refused(
        &run,
        "old-subscription-origins",
        "subscription_without_origin",
    );
    assert_eq!(
        names(&run, "old-subscription-origins"),
        ["orphan (database postgres)"]
    );
}

/// The isn rule fires only when the installations pass float8 differently,
/// which two x86-64 builds never do; its query is proven on a real isn install.
#[test]
fn the_isn_query_finds_isn_functions() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql("postgres", "CREATE EXTENSION isn;");
    let sql = pgm_verifier::rule_sql("old-isn-float8", pgm_cluster::PgMajor::new(15)).unwrap();
    let found = pair
        .old
        .client("postgres")
        .query(sql.as_str(), &[])
        .unwrap()
        .len();
    pair.old.stop();
    assert!(found > 20, "isn has many C functions; found {found}");
    // With matching float8 passing the check passes, isn and all.
    let run = pair.check(&[]);
    assert_eq!(run.check("old-isn-float8")["status"], "pass");
}

#[test]
fn a_tablespace_inside_the_old_data_directory_is_a_warning() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    let inside = pair.old.datadir.join("ts_inside");
    std::fs::create_dir(&inside).unwrap();
    pgm_testkit::chown_to_test_user(&inside);
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            &format!("CREATE TABLESPACE inside LOCATION '{}'", inside.display()),
        )
    });
    let run = pair.check(&[]);
    assert_eq!(run.status, 0, "a warning, not a failure: {}", run.stderr);
    let check = run.check("old-tablespace-locations");
    assert_eq!(check["status"], "warn");
    assert_eq!(check["code"], "tablespace_in_datadir");
}

/// The extension preflight lists every installed extension per database with
/// what the new installation offers: 12's hstore 1.6 meets 18's 1.8.
#[test]
fn extension_preflight_report() {
    let Some(run) = check_with(12, 18, "CREATE EXTENSION hstore; CREATE EXTENSION citext;") else {
        return;
    };
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report = names(&run, "new-extensions");
    assert!(
        report
            .iter()
            .any(|n| n.starts_with("hstore 1.6; update to 1.8")),
        "{report:?}"
    );
    assert!(
        report
            .iter()
            .any(|n| n.starts_with("plpgsql 1.0, the new installation's default too")),
        "{report:?}"
    );
    assert!(
        report.iter().any(|n| n.starts_with("citext ")),
        "{report:?}"
    );
}

/// 12's build carries ICU 60, 15's (Debian) a newer ICU: an index ordered by
/// an ICU collation changes meaning. The check warns and lists it; the
/// upgrade writes reindex_after_upgrade.sql, which rebuilds it.
#[test]
fn collation_library_versions_that_changed() {
    let Some(mut pair) = Pair::new(12, 15) else {
        return;
    };
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            "CREATE COLLATION german (provider = icu, locale = 'de');
             CREATE TABLE words (w text COLLATE german);
             INSERT INTO words SELECT md5(g::text) FROM generate_series(1, 1000) g;
             CREATE INDEX words_w ON words (w);",
        )
    });
    let run = pair.check(&[]);
    assert_eq!(run.status, 0, "a warning, not a failure: {}", run.stderr);
    let check = run.check("new-collation-versions");
    assert_eq!(check["status"], "warn", "{check}");
    assert_eq!(check["code"], "collation_version_changed");
    assert!(
        names(&run, "new-collation-versions")[0].starts_with("public.words_w (ICU collation de:")
    );
    // --strict makes it a failure.
    let strict = pair.check(&["--strict"]);
    assert_refused(
        &strict,
        "new-collation-versions",
        "collation_version_changed",
    );
    let script = upgrade_for_reindex_script(&pair);
    assert!(
        script.contains("\\connect 'postgres'")
            && script.contains("REINDEX INDEX CONCURRENTLY public.words_w;"),
        "{script}"
    );
    pair.new.start();
    run_reindex_script(&pair);
    pair.new.stop();
}

/// Both installations run on this machine's C library, so libc versions
/// can only differ from what the catalog recorded: a database and a
/// collation made under an older glibc (as after an OS upgrade under the old
/// cluster) are produced by recording the older version, exactly as such a
/// catalog would hold it. Needs the en_US.UTF-8 locale (scripts/test.sh
/// generates it).
#[test]
fn indexes_on_collations_recorded_under_another_version_including_the_default() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            "CREATE DATABASE shop LOCALE 'en_US.UTF-8' TEMPLATE template0",
        );
        c.sql(
            "postgres",
            "UPDATE pg_database SET datcollversion = '2.31' WHERE datname = 'shop'",
        );
        c.sql(
            "shop",
            "CREATE COLLATION us (provider = libc, locale = 'en_US.UTF-8');
             UPDATE pg_collation SET collversion = '2.31' WHERE collname = 'us';
             CREATE TABLE names (n text, u text COLLATE us, c text COLLATE \"C\");
             INSERT INTO names SELECT md5(g::text), md5(g::text), md5(g::text) FROM generate_series(1, 500) g;
             CREATE INDEX names_n ON names (n);
             CREATE INDEX names_u ON names (u);
             CREATE INDEX names_c ON names (c);",
        );
    });
    let run = pair.check(&[]);
    assert_eq!(run.status, 0, "a warning, not a failure: {}", run.stderr);
    let check = run.check("new-collation-versions");
    assert_eq!(check["status"], "warn", "{check}");
    let found = names(&run, "new-collation-versions");
    assert_eq!(
        found.len(),
        2,
        "the C-collated index is not versioned: {found:?}"
    );
    assert!(
        found[0].starts_with("public.names_n (libc collation en_US.UTF-8, the database default: recorded 2.31, old library ")
            && found[1].starts_with("public.names_u (libc collation en_US.UTF-8: recorded 2.31, old library "),
        "{found:?}"
    );
    assert_eq!(check["objects"][0]["database"], "shop");
    assert_eq!(check["objects"][0]["schema"], "public");

    let script = upgrade_for_reindex_script(&pair);
    for line in [
        "\\connect 'shop'",
        "REINDEX INDEX CONCURRENTLY public.names_n;",
        "REINDEX INDEX CONCURRENTLY public.names_u;",
        "ALTER COLLATION public.us REFRESH VERSION;",
        "ALTER DATABASE \"shop\" REFRESH COLLATION VERSION;",
    ] {
        assert!(script.contains(line), "{line} missing from:\n{script}");
    }
    assert!(!script.contains("names_c"), "{script}");
    pair.new.start();
    run_reindex_script(&pair);
    // The refreshed versions are now the library's own.
    let row = pair
        .new
        .client("shop")
        .query_one(
            "SELECT d.datcollversion = pg_database_collation_actual_version(d.oid),
                    c.collversion = pg_collation_actual_version(c.oid)
               FROM pg_database d, pg_collation c WHERE d.datname = 'shop' AND c.collname = 'us'",
            &[],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1));
    pair.new.stop();
}

/// 17 and 18 carry different Unicode tables. Expressions that case-map or
/// match case-insensitively under the builtin Unicode collation, or call the
/// Unicode functions, are listed; the same under libc's C.UTF-8 are not.
#[test]
fn expressions_that_depend_on_the_unicode_version() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            "CREATE TABLE u (t text COLLATE pg_c_utf8, plain text,
                             folded text GENERATED ALWAYS AS (lower(t)) STORED,
                             CONSTRAINT u_check CHECK (t !~* 'forbidden'),
                             CONSTRAINT u_any CHECK (NOT (t ~* ANY (ARRAY['x', 'y']))));
             CREATE DOMAIN word AS text CHECK (VALUE = initcap(VALUE COLLATE pg_c_utf8));
             INSERT INTO u SELECT 'Word ' || g, 'plain ' || g FROM generate_series(1, 200) g;
             CREATE INDEX u_upper ON u (upper(t));
             CREATE INDEX u_norm ON u (normalize(plain));
             CREATE INDEX u_lower_libc ON u (lower(plain));
             CREATE INDEX u_t ON u (t);
             CREATE MATERIALIZED VIEW mv AS SELECT initcap(t) AS i FROM u;
             CREATE TABLE p (t text COLLATE pg_c_utf8) PARTITION BY RANGE (lower(t));
             CREATE TABLE p1 PARTITION OF p FOR VALUES FROM ('a') TO ('n');",
        )
    });
    let run = pair.check(&[]);
    assert_eq!(run.status, 0, "a warning, not a failure: {}", run.stderr);
    let check = run.check("new-unicode-version");
    assert_eq!(check["status"], "warn", "{check}");
    assert_eq!(check["code"], "unicode_version_changed");
    assert_eq!(
        names(&run, "new-unicode-version"),
        [
            "public.mv",
            "public.p",
            "public.u (folded)",
            "public.u (u_any)",
            "public.u (u_check)",
            "public.u_norm",
            "public.u_upper",
            "public.word (word_check)"
        ]
    );
    let kinds: Vec<&str> = check["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "materialized view",
            "partitioned table",
            "generated column",
            "constraint",
            "constraint",
            "index",
            "index",
            "domain constraint"
        ]
    );
    let strict = pair.check(&["--strict"]);
    assert_refused(&strict, "new-unicode-version", "unicode_version_changed");

    let script = upgrade_for_reindex_script(&pair);
    assert!(
        script.contains("REINDEX INDEX CONCURRENTLY public.u_norm;")
            && script.contains("REINDEX INDEX CONCURRENTLY public.u_upper;")
            && script.contains("REFRESH MATERIALIZED VIEW public.mv;")
            && !script.contains("u_lower_libc"),
        "{script}"
    );
    pair.new.start();
    run_reindex_script(&pair);
    pair.new.stop();
}

/// A subscription whose table is mid-copy cannot be carried. No publisher is
/// needed to show it: the subscription is made without connecting and the
/// table's state is set the way the initial copy would leave it.
#[test]
fn subscriptions_with_tables_mid_synchronization() {
    let Some(run) = check_with(
        17,
        18,
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE SUBSCRIPTION sub CONNECTION 'host=/nonexistent dbname=nowhere' PUBLICATION pub
           WITH (connect = false, enabled = false, create_slot = false, slot_name = NONE);
         INSERT INTO pg_subscription_rel (srsubid, srrelid, srsubstate, srsublsn)
           SELECT oid, 't'::regclass, 'd', NULL FROM pg_subscription WHERE subname = 'sub';",
    ) else {
        return;
    };
    assert_refused(
        &run,
        "old-subscription-states",
        "subscription_relation_state",
    );
    assert_eq!(
        names(&run, "old-subscription-states"),
        ["sub: table public.t in state d"]
    );
}

/// Each carried subscription needs a replication origin in the new server.
#[test]
fn too_few_replication_origins_for_the_subscriptions() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            "CREATE SUBSCRIPTION sub CONNECTION 'host=/nonexistent dbname=nowhere' PUBLICATION pub
               WITH (connect = false, enabled = false, create_slot = false, slot_name = NONE);",
        )
    });
    let ok = pair.check(&[]);
    assert_eq!(
        ok.check("new-replication-origins")["status"],
        "pass",
        "{}",
        ok.stderr
    );
    let run = pair.check(&["-O", "-c max_active_replication_origins=0"]);
    assert_refused(
        &run,
        "new-replication-origins",
        "too_few_replication_origins",
    );
}
