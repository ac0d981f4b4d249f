fn main() {
    print!("{}", site_recovery::api::crds_yaml());
}
