//! Struct field offsets from the running kernel's BTF. aya emits no CO-RE relocations for Rust
//! programs, so every offset the eBPF side uses is resolved here and handed over in `CONFIG`.
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use btf_rs::{Btf, Type};
use leaktrace_common::{KernelOffsets, OFFSET_UNKNOWN};

pub(crate) const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub(super) struct KernelBtf {
    btf: Btf,
}

/// Where a field lives and how wide it is.
struct Field {
    offset: u32,
    size: usize,
}

impl KernelBtf {
    pub(super) fn load(path: &Path) -> Result<Self> {
        let btf = Btf::from_file(path).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Self { btf })
    }

    pub(super) fn offsets(&self) -> Result<KernelOffsets> {
        let off = |ty: &str, path: &str| self.field(ty, path).map(|f| f.offset);
        let protocol = self.field("sock", "sk_protocol")?;
        let receive_queue = off("sock", "sk_receive_queue")?;
        // 6.13 replaced the plain counter `f_count` with `f_ref`, which stores references - 1.
        let (file_count, file_count_one) = match off("file", "f_ref") {
            Ok(offset) => (offset, 0),
            Err(_) => (off("file", "f_count")?, 1),
        };
        Ok(KernelOffsets {
            task_files: off("task_struct", "files")?,
            files_fdt: off("files_struct", "fdt")?,
            fdtable_max_fds: off("fdtable", "max_fds")?,
            fdtable_fd: off("fdtable", "fd")?,
            file_private_data: off("file", "private_data")?,
            file_inode: off("file", "f_inode")?,
            file_count,
            file_count_one,
            inode_mode: off("inode", "i_mode")?,
            inode_ino: off("inode", "i_ino")?,
            socket_sk: off("socket", "sk")?,
            socket_file: off("socket", "file")?,
            sock_socket: off("sock", "sk_socket")?,
            sock_family: off("sock", "__sk_common.skc_family")?,
            sock_state: off("sock", "__sk_common.skc_state")?,
            sock_num: off("sock", "__sk_common.skc_num")?,
            inet_sport: off("inet_sock", "inet_sport")?,
            sock_dport: off("sock", "__sk_common.skc_dport")?,
            sock_rcv_saddr: off("sock", "__sk_common.skc_rcv_saddr")?,
            sock_daddr: off("sock", "__sk_common.skc_daddr")?,
            sock_v6_rcv_saddr: off("sock", "__sk_common.skc_v6_rcv_saddr")?,
            sock_v6_daddr: off("sock", "__sk_common.skc_v6_daddr")?,
            sock_protocol: protocol.offset,
            sock_protocol_size: protocol.size as u32,
            // Moved into sock_common (skc_flags) in 6.16.
            sock_flags: off("sock", "sk_flags")
                .or_else(|_| off("sock", "__sk_common.skc_flags"))?,
            sock_receive_qlen: receive_queue + off("sk_buff_head", "qlen")?,
            tcp_rcv_nxt: off("tcp_sock", "rcv_nxt")?,
            tcp_copied_seq: off("tcp_sock", "copied_seq")?,
            sock_done_bit: self.enum_value("sock_flags", "SOCK_DONE")?,
            // A bitfield before 5.x: then sockets shut down before the trace started are not
            // recognized as such, everything else works.
            sock_shutdown: off("sock", "sk_shutdown").unwrap_or(OFFSET_UNKNOWN),
        })
    }

    /// Whether the kernel has a function of this name (an fentry/kprobe target).
    pub(super) fn has_function(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
    }

    /// How many parameters the kernel function `name` takes, if it has one of that name.
    pub(super) fn parameter_count(&self, name: &str) -> Option<u32> {
        self.btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Func(func) => match self.btf.resolve_chained_type(&func).ok()? {
                    Type::FuncProto(proto) => u32::try_from(proto.parameters.len()).ok(),
                    _ => None,
                },
                _ => None,
            })
    }

    /// Whether the kernel has a tracepoint of this name that BTF programs (`tp_btf`) can attach
    /// to: each has a `btf_trace_<name>` typedef.
    pub(super) fn has_btf_tracepoint(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Typedef(_))))
    }

    /// Byte offset and size of `path` ("a.b.c") inside struct `ty`; members of anonymous
    /// structs and unions are searched through, as C allows naming them directly.
    fn field(&self, ty: &str, path: &str) -> Result<Field> {
        let mut current = self
            .named_struct(ty)
            .with_context(|| format!("kernel BTF has no struct {ty}"))?;
        let mut offset = 0;
        let mut size = 0;
        for name in path.split('.') {
            let (member_offset, member_type) = self
                .find_member(&current, name)?
                .ok_or_else(|| anyhow!("kernel BTF: struct {ty} has no field {path}"))?;
            offset += member_offset;
            size = self.size_of(&member_type)?;
            current = member_type;
        }
        Ok(Field { offset, size })
    }

    fn named_struct(&self, name: &str) -> Result<Type> {
        self.btf
            .resolve_types_by_name(name)?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(|| anyhow!("not found"))
    }

    /// (byte offset, resolved type) of member `name` of a struct or union, recursing into
    /// anonymous members.
    fn find_member(&self, ty: &Type, name: &str) -> Result<Option<(u32, Type)>> {
        let members = match self.strip(ty.clone())? {
            Type::Struct(s) | Type::Union(s) => s.members,
            _ => return Ok(None),
        };
        for member in &members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let member_type = self.strip(self.btf.resolve_chained_type(member)?)?;
            if member_name == name {
                if member.bitfield_size().is_some_and(|bits| bits != 0) {
                    bail!("kernel BTF: field {name} is a bitfield, which leaktrace cannot read");
                }
                return Ok(Some((member.bit_offset() / 8, member_type)));
            }
            if member_name.is_empty() {
                if let Some((inner, found)) = self.find_member(&member_type, name)? {
                    return Ok(Some((member.bit_offset() / 8 + inner, found)));
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut ty: Type) -> Result<Type> {
        while let Type::Typedef(_)
        | Type::Volatile(_)
        | Type::Const(_)
        | Type::Restrict(_)
        | Type::TypeTag(_) = ty
        {
            let inner = ty
                .as_btf_type()
                .ok_or_else(|| anyhow!("kernel BTF: {} without a target type", ty.name()))?;
            ty = self.btf.resolve_chained_type(inner)?;
        }
        Ok(ty)
    }

    fn size_of(&self, ty: &Type) -> Result<usize> {
        Ok(match ty {
            Type::Int(i) => i.size(),
            Type::Ptr(_) => 8,
            Type::Enum(e) => e.size(),
            Type::Struct(s) | Type::Union(s) => s.size(),
            Type::Array(a) => {
                let element = self.strip(self.btf.resolve_chained_type(a)?)?;
                a.len() * self.size_of(&element)?
            }
            _ => 0,
        })
    }

    fn enum_value(&self, ty: &str, name: &str) -> Result<u32> {
        for t in self.btf.resolve_types_by_name(ty)? {
            if let Type::Enum(e) = t {
                for member in &e.members {
                    if self.btf.resolve_name(member)? == name {
                        return Ok(member.val());
                    }
                }
            }
        }
        bail!("kernel BTF has no {name} in enum {ty}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's kernel: the point is that the names and nesting leaktrace
    /// asks for exist in a real BTF, not in a fixture written to match the code.
    #[test]
    fn resolves_every_offset_from_the_running_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            leaktrace_tests::skip(
                "resolves_every_offset_from_the_running_kernel",
                &format!("no {VMLINUX_BTF}"),
            );
            return;
        }
        let btf = KernelBtf::load(path).unwrap();
        let offsets = btf.offsets().unwrap();
        // sock_common opens with the address pair, then the hash, then the port pair.
        assert_eq!(offsets.sock_daddr, 0);
        assert_eq!(offsets.sock_rcv_saddr, 4);
        assert_eq!(offsets.sock_dport, 12);
        assert_eq!(offsets.sock_num, 14);
        assert_eq!(offsets.sock_family, 16);
        assert_eq!(offsets.sock_state, 18);
        assert_eq!(offsets.sock_protocol_size, 2);
        assert!(offsets.sock_v6_rcv_saddr > offsets.sock_family);
        assert!(offsets.tcp_rcv_nxt > offsets.sock_receive_qlen);
        assert!(offsets.tcp_copied_seq > offsets.sock_receive_qlen);
        assert_eq!(offsets.sock_done_bit, 1);
        assert!(offsets.sock_socket > offsets.sock_flags);
        // inet_sock opens with its struct sock.
        assert!(offsets.inet_sport > offsets.sock_socket);
        assert!(btf.has_function("inet_csk_accept"));
        // struct sock *inet_csk_accept(struct sock *sk, struct proto_accept_arg *arg), 6.10+.
        assert_eq!(btf.parameter_count("inet_csk_accept"), Some(2));
        assert_eq!(btf.parameter_count("no_such_kernel_function"), None);
        assert!(!btf.has_function("no_such_kernel_function"));
        assert!(btf.has_btf_tracepoint("inet_sock_set_state"));
        assert!(!btf.has_btf_tracepoint("no_such_tracepoint"));
    }

    #[test]
    fn a_missing_field_is_named_in_the_error() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            leaktrace_tests::skip(
                "a_missing_field_is_named_in_the_error",
                &format!("no {VMLINUX_BTF}"),
            );
            return;
        }
        let btf = KernelBtf::load(path).unwrap();
        let error = btf
            .field("sock", "no_such_field")
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("sock") && error.contains("no_such_field"),
            "{error}"
        );
    }
}
