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
    assert_refused(&run, "new-xml", "xml_unavailable");
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
    assert_refused(&run, "new-extensions", "extension_missing");
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
        .starts_with("1 shared libraries"));
}

#[test]
fn shared_preload_libraries_must_load_in_the_new_installation() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    let conf = pair.old.datadir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    // sepgsql... no: a library 15's Debian build has and 18's build lacks.
    text.push_str("\nshared_preload_libraries = 'pgcrypto'\n");
    std::fs::write(&conf, text).unwrap();
    pair.old.with_running(|_| ());
    let run = pair.check(&[]);
    assert_refused(&run, "new-libraries", "library_missing");
    assert!(run.check("new-libraries")["objects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["kind"] == "setting"));
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
    let sql = pgm_verifier::columns_using(&[("information_schema", "sql_identifier")]);
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

#[test]
fn logical_slots_are_refused_until_they_can_be_carried() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    let conf = pair.old.datadir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nwal_level = logical\n");
    std::fs::write(&conf, text).unwrap();
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            "SELECT pg_create_logical_replication_slot('subscriber_a', 'pgoutput');",
        )
    });
    let run = pair.check(&[]);
    assert_refused(&run, "old-logical-slots", "logical_slots_not_carried");
    assert_eq!(names(&run, "old-logical-slots"), ["subscriber_a"]);
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
    let sql = pgm_verifier::rule_sql("old-isn-float8").unwrap();
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
    let mut args = pair.dir_args();
    args.extend(["--link".into(), "--json".into()]);
    let run = pair.run(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let script =
        std::fs::read_to_string(pair.sandbox.path().join("reindex_after_upgrade.sql")).unwrap();
    assert!(
        script.contains("\\connect 'postgres'")
            && script.contains("REINDEX INDEX CONCURRENTLY public.words_w;"),
        "{script}"
    );
    pair.new.start();
    run_ok(
        as_test_user(pair.new.bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&pair.new.sockdir)
            .args(["-p", &pair.new.port.to_string(), "-d", "postgres", "-f"])
            .arg(pair.sandbox.path().join("reindex_after_upgrade.sql")),
    );
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
