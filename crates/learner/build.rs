fn main() {
    promptcl_torch_link::link_libtorch();
}
