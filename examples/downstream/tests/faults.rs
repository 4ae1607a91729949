netfault::scenarios!("tests/faults");
