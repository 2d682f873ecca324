//! Field tables: the broker's raw reader writes back exactly the octets it read, its depth check
//! bounds what amq-protocol then builds, and amq-protocol's tables survive a round trip.
#![no_main]

use amq_protocol::types::parsing::parse_field_table;
use libfuzzer_sys::fuzz_target;
use warren::protocol::table::{self, MAX_DEPTH, RawValue, ShortS};
use warren_fuzz::{table_bytes, table_depth};

fuzz_target!(|data: &[u8]| {
    for s in [ShortS::Int16, ShortS::ShortString] {
        if let Ok(v) = table::value(&[&b"F"[..], data].concat(), s) {
            rewrite(&v, s);
        }
    }
    if table::check_depth(data).is_err() {
        return;
    }
    let Ok((_, parsed)) = parse_field_table(data) else {
        return;
    };
    assert!(
        table_depth(&parsed) <= MAX_DEPTH,
        "the depth check let a deeper table through"
    );
    for v in parsed.inner().values() {
        let _ = table::type_name(v);
    }
    // Floats make `==` on tables unreliable (NaN); their encodings compare exactly.
    let written = table_bytes(&parsed);
    let (rest, again) = parse_field_table(&written[..]).expect("a written table parses");
    assert!(rest.is_empty(), "a written table is read to its end");
    assert_eq!(table_bytes(&again), written);
});

/// Writes `v` back from its parts, and checks that the result is its own octets; then does the
/// same for every value nested in it.
fn rewrite(v: &RawValue<'_>, s: ShortS) {
    if let Some(entries) = v.entries() {
        let entries: Result<Vec<_>, _> = entries.collect();
        if let Ok(entries) = entries {
            let mut out = vec![b'F'];
            table::put_table(&mut out, entries.iter().map(|(k, v)| (*k, v.tagged())));
            assert_eq!(
                out,
                v.tagged(),
                "a table's entries write back to its octets"
            );
            entries.iter().for_each(|(_, v)| rewrite(v, s));
        }
    } else if let Some(items) = v.items() {
        let items: Result<Vec<_>, _> = items.collect();
        if let Ok(items) = items {
            let mut out = Vec::new();
            table::put_long(
                &mut out,
                b'A',
                &items
                    .iter()
                    .flat_map(|i| i.tagged())
                    .copied()
                    .collect::<Vec<_>>(),
            );
            assert_eq!(out, v.tagged(), "an array's items write back to its octets");
            items.iter().for_each(|i| rewrite(i, s));
        }
    } else if let Some(text) = v.string() {
        assert!(v.tagged().ends_with(text));
    }
}
