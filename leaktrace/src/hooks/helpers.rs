//! Whether this kernel lets tracing programs call a helper. The verifier refuses a program that
//! calls one the kernel does not offer its program type, even on a path that never runs with
//! this configuration's values: a feature that needs one is checked before the real object
//! loads, so that its absence is one clear line rather than every hook's verifier log.
use std::{ffi::CStr, mem::size_of};

/// `bpf_get_current_ancestor_cgroup_id` (include/uapi/linux/bpf.h), which `--cgroup` needs:
/// Debian's 6.1 lets tracing programs call it, its 5.10 refuses them ("unknown func").
pub(super) const GET_CURRENT_ANCESTOR_CGROUP_ID: i32 = 123;

// include/uapi/linux/bpf.h
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel takes a shorter
/// attribute as one whose remaining fields are zero.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
}

/// Whether a tracepoint program calling `helper` with 0 loads: the helpers a classic tracepoint
/// may call are those of kprobes and BTF programs too.
pub(super) fn tracing_can_call(helper: i32) -> bool {
    // r1 = 0; call helper; r0 = 0; exit
    let insns: [u64; 4] = [
        insn(0xb7, 1, 0),
        insn(0x85, 0, helper),
        insn(0xb7, 0, 0),
        insn(0x95, 0, 0),
    ];
    let license: &CStr = c"GPL";
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_TRACEPOINT,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
    };
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute of the size passed, and the buffers it
    // points to outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: the program's fd, ours alone, closed once.
    unsafe { libc::close(fd as libc::c_int) };
    true
}

/// One eBPF instruction: `code`, destination register (the source is 0), immediate.
fn insn(code: u8, dst: u8, imm: i32) -> u64 {
    u64::from(code) | u64::from(dst) << 8 | u64::from(imm as u32) << 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_encoded_as_the_kernel_reads_them() {
        // BPF_ALU64 | BPF_MOV | BPF_K into r1, imm 0; BPF_JMP | BPF_CALL, imm 123.
        assert_eq!(insn(0xb7, 1, 0), 0x0000_0000_0000_01b7);
        assert_eq!(insn(0x85, 0, 123), 0x0000_007b_0000_0085);
    }
}
