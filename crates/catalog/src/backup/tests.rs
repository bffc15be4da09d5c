//! The manifest's and the restore script's rules, without a server.

use pgm_cluster::PgMajor;

use super::*;

fn manifest(dir: &Path) -> Manifest {
    std::fs::write(dir.join(GLOBALS_FILE), "CREATE ROLE \"a\";\n").unwrap();
    std::fs::write(dir.join(database_file(0)), b"dump bytes").unwrap();
    Manifest {
        format: MANIFEST_FORMAT,
        created_unix_ms: 1,
        pg_migrate_version: "0".into(),
        server_version: "15.18".into(),
        server_major: 15,
        datadir: "/old".into(),
        tools_bindir: "/bin".into(),
        tools_version: "15.18".into(),
        tools_major: 15,
        install_user: "postgres".into(),
        template0: BackupLocale {
            encoding: "UTF8".into(),
            provider: "libc".into(),
            collate: "C".into(),
            ctype: "C".into(),
            locale: None,
        },
        globals: describe_file(dir, GLOBALS_FILE).unwrap(),
        databases: vec![BackupDatabase {
            name: "app".into(),
            dump: describe_file(dir, &database_file(0)).unwrap(),
            files: Vec::new(),
        }],
        tablespaces: Vec::new(),
    }
}

#[test]
fn a_backup_is_verified_file_by_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupWithoutManifest)
    ));
    let m = manifest(dir.path());
    write_manifest(dir.path(), &m).unwrap();
    assert_eq!(verify_backup(dir.path()).unwrap(), m);
    // The same size, another byte.
    std::fs::write(dir.path().join(database_file(0)), b"dump bytez").unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupFileDamaged { ref file, .. }) if *file == database_file(0)
    ));
    std::fs::write(dir.path().join(database_file(0)), b"dump").unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupFileDamaged { .. })
    ));
    std::fs::remove_file(dir.path().join(database_file(0))).unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupFileMissing(ref file)) if *file == database_file(0)
    ));
    std::fs::write(dir.path().join(MANIFEST), b"{").unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupManifestUnreadable(_))
    ));
}

#[test]
fn a_directory_dump_is_verified_file_by_file_and_needs_format_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manifest(dir.path());
    let inside = dir.path().join(database_file(1));
    std::fs::create_dir(&inside).unwrap();
    std::fs::write(inside.join("toc.dat"), b"table of contents").unwrap();
    std::fs::write(inside.join("3456.dat.gz"), b"rows").unwrap();
    let (dump, files) = describe_directory(dir.path(), &database_file(1)).unwrap();
    assert_eq!(dump.bytes, 21);
    assert_eq!(
        files.iter().map(|f| f.file.as_str()).collect::<Vec<_>>(),
        ["3456.dat.gz", "toc.dat"]
    );
    m.databases.push(BackupDatabase {
        name: "big".into(),
        dump,
        files,
    });
    assert_eq!(
        Manifest::format_for(&m.databases),
        MANIFEST_FORMAT_DIRECTORIES
    );
    m.format = Manifest::format_for(&m.databases);
    write_manifest(dir.path(), &m).unwrap();
    assert_eq!(verify_backup(dir.path()).unwrap(), m);
    let shown = |file: &str| format!("{}/{file}", database_file(1));

    // A format-1 manifest cannot hold a directory (an older pg-migrate
    // would take it for a damaged file).
    let mut old = m.clone();
    old.format = MANIFEST_FORMAT;
    write_manifest(dir.path(), &old).unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupManifestUnreadable(ref why)) if why.contains("directory")
    ));
    // A file left out of the list no longer matches the whole's digest.
    let mut shortened = m.clone();
    shortened.databases[1].files.remove(0);
    write_manifest(dir.path(), &shortened).unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupManifestUnreadable(ref why)) if why.contains("list")
    ));
    // A name that leaves the dump's directory.
    let mut escaping = m.clone();
    escaping.databases[1].files[0].file = "../globals.sql".into();
    write_manifest(dir.path(), &escaping).unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupManifestUnreadable(ref why)) if why.contains("../globals.sql")
    ));

    write_manifest(dir.path(), &m).unwrap();
    // A file the list does not name: pg_restore prefers 3456.dat to
    // 3456.dat.gz, so it would be restored unchecked.
    std::fs::write(inside.join("3456.dat"), b"other rows").unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupFileDamaged { ref file, .. }) if *file == shown("3456.dat")
    ));
    std::fs::remove_file(inside.join("3456.dat")).unwrap();
    assert_eq!(verify_backup(dir.path()).unwrap(), m);
    // A name with a control character could make two lists hash alike.
    let mut control = m.clone();
    control.databases[1].files[0].file = "a\nb".into();
    write_manifest(dir.path(), &control).unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupManifestUnreadable(_))
    ));
    write_manifest(dir.path(), &m).unwrap();
    std::fs::write(inside.join("3456.dat.gz"), b"rowz").unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupFileDamaged { ref file, .. }) if *file == shown("3456.dat.gz")
    ));
    std::fs::remove_file(inside.join("toc.dat")).unwrap();
    std::fs::write(inside.join("3456.dat.gz"), b"rows").unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupFileMissing(ref file)) if *file == shown("toc.dat")
    ));
    // Anything but files in it is not pg_dump's.
    std::fs::create_dir(inside.join("sub")).unwrap();
    assert!(describe_directory(dir.path(), &database_file(1)).is_err());
    // A format this pg-migrate does not know.
    let mut newer = m.clone();
    newer.format = MANIFEST_FORMAT_DIRECTORIES + 1;
    write_manifest(dir.path(), &newer).unwrap();
    assert!(matches!(
        verify_backup(dir.path()),
        Err(Error::BackupManifestUnreadable(ref why)) if why.contains("format 3")
    ));
}

#[test]
fn a_backup_replaces_only_backups_and_only_once_finished() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("backup");
    let write = |name: &str| {
        let partial = start_backup_dir(&dir).unwrap();
        std::fs::write(partial.join(name), b"x").unwrap();
        std::fs::write(partial.join(MANIFEST), b"{}").unwrap();
        partial
    };
    write("first");
    assert_eq!(finish_backup_dir(&dir).unwrap(), None);
    assert!(dir.join("first").exists() && !partial_backup_dir(&dir).exists());
    // A backup that fails leaves the good one alone; the next one clears it.
    let failed = start_backup_dir(&dir).unwrap();
    std::fs::write(failed.join("half"), b"x").unwrap();
    assert!(dir.join("first").exists());
    write("second");
    assert!(!partial_backup_dir(&dir).join("half").exists());
    let aside = finish_backup_dir(&dir).unwrap().unwrap();
    assert_eq!(aside, root.path().join("backup.old"));
    assert!(aside.join("first").exists() && dir.join("second").exists());
    write("third");
    finish_backup_dir(&dir).unwrap();
    assert!(aside.join("second").exists() && !aside.join("first").exists());
    // Anything else is neither moved nor removed.
    let foreign = root.path().join("photos");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), b"meow").unwrap();
    assert!(refuse_backup_dir(&foreign)
        .unwrap()
        .contains("not a pg-migrate backup"));
    assert!(start_backup_dir(&foreign).is_err());
    std::fs::create_dir(root.path().join("docs.old")).unwrap();
    std::fs::write(root.path().join("docs.old/letter"), b"").unwrap();
    assert!(refuse_backup_dir(&root.path().join("docs")).is_some());
    std::fs::write(root.path().join("file"), b"").unwrap();
    assert!(refuse_backup_dir(&root.path().join("file")).is_some());
    // An empty directory (a fresh mount, say) takes a backup.
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(refuse_backup_dir(&empty).is_none());
    assert!(foreign.join("cat.jpg").exists());
}

#[test]
fn globals_skip_existing_roles_and_move_tablespaces() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manifest(dir.path());
    std::fs::write(
        dir.path().join(GLOBALS_FILE),
        "\\restrict abc\nSET x = 1;\n--\n-- Roles\n--\n\nCREATE ROLE \"postgres\";\nALTER ROLE \"postgres\" WITH SUPERUSER;\nCREATE ROLE \"app\"\"s\";\nCREATE TABLESPACE \"extra\" OWNER \"postgres\" LOCATION '/old/ts';\nCREATE TABLESPACE \"other\" OWNER \"postgres\" LOCATION '/keep';\n\\unrestrict abc\n",
    )
    .unwrap();
    m.globals = describe_file(dir.path(), GLOBALS_FILE).unwrap();
    let out = dir.path().join("out.sql");
    globals_for_target(
        &m,
        dir.path(),
        &["postgres".into()],
        &[("extra".into(), PathBuf::from("/new/it's"))],
        &out,
    )
    .unwrap();
    let text = std::fs::read_to_string(out).unwrap();
    assert!(!text.contains("CREATE ROLE \"postgres\";"), "{text}");
    assert!(text.contains("ALTER ROLE \"postgres\" WITH SUPERUSER;"));
    assert!(text.contains("CREATE ROLE \"app\"\"s\";"));
    assert!(
        text.contains("CREATE TABLESPACE \"extra\" OWNER \"postgres\" LOCATION '/new/it''s';"),
        "{text}"
    );
    assert!(text.contains("LOCATION '/keep';"));
    assert!(text.starts_with("\\restrict abc\n") && text.ends_with("\\unrestrict abc\n"));
}

#[test]
fn restore_reads_dumps_of_its_own_major_and_older() {
    assert!(restore_can_read(PgMajor::new(18), 15));
    assert!(restore_can_read(PgMajor::new(15), 15));
    assert!(!restore_can_read(PgMajor::new(15), 18));
}
