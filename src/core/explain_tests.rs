use super::*;

fn parse(q: &str) -> Result<Query, ExplainError> {
    Query::parse_arg(q)
}

#[test]
fn a_subject_is_read_from_the_query() {
    assert_eq!(
        parse("pod=agents/s-1").unwrap().lookup,
        Lookup::Pod {
            namespace: "agents".into(),
            name: "s-1".into()
        }
    );
    let q = parse("execution=e-1&profile=generic&namespace=team-a").unwrap();
    assert_eq!(q.lookup, record(RecordKind::Execution, "e-1"));
    assert_eq!(q.profile.as_deref(), Some("generic"));
    assert_eq!(q.namespace.as_deref(), Some("team-a"));
    assert_eq!(
        parse("sandbox=sb-1").unwrap().lookup,
        record(RecordKind::Sandbox, "sb-1")
    );
    // As the status page's links encode it.
    assert_eq!(
        parse("session=slack%3AC05F3A%3A1774900000%2E000100&profile=sandbox-api")
            .unwrap()
            .lookup,
        record(RecordKind::Session, "slack:C05F3A:1774900000.000100")
    );
}

#[test]
fn a_bad_query_names_what_is_wrong() {
    let bad = |q: &str| match parse(q) {
        Err(ExplainError::Bad(m)) => m,
        other => panic!("{q}: {other:?}"),
    };
    assert!(bad("pod=s-1").contains("pod: \"s-1\" is not NAMESPACE/NAME"));
    assert!(bad("session=").contains("session: the id is empty"));
    assert!(bad("session=a&execution=b").contains("give one subject"));
    assert!(bad("profile=generic").contains("nothing to explain"));
    assert!(bad("sesion=a").contains("\"sesion\" is not a parameter of explain"));
}
