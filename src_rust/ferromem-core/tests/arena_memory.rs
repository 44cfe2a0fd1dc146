//! A fresh arena chunk costs resident memory only for the rows written: its zeroed pages
//! are committed by the OS on first write (the chunk is allocated zeroed, not written
//! zero). Alone in its own test binary, so no other test's allocations move the RSS.

#[cfg(target_os = "linux")]
#[test]
fn a_new_chunk_commits_only_the_rows_written() {
    use ferromem_core::arena::Arena;
    let resident = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    };
    let dim = 1536;
    let mut vectors: Vec<Arena<f32>> = Vec::new();
    let before = resident();
    // 8 chunks of 4096 x 1536 f32 (24 MiB each, 192 MiB in all), one row written in each.
    for _ in 0..8 {
        let mut a: Arena<f32> = Arena::new(dim);
        let r = a.push_row();
        a.row_mut(r).fill(1.0);
        vectors.push(a);
    }
    let grown = resident().saturating_sub(before);
    assert!(grown < 16 << 20, "8 one-row chunks made {} MiB resident", grown >> 20);
    assert!(vectors.iter().all(|a| a.row(0)[dim - 1] == 1.0 && a.chunk(0)[dim] == 0.0));
}
