// The calibration guest: no firmware, no kernel. The host lays out a small "aux" region (page
// tables, GDT, code, one page-list mailbox per vCPU) and starts every vCPU directly in 64-bit long
// mode through KVM_SET_SREGS/KVM_SET_REGS. Guest RAM (memslot 0, dirty-logged) holds nothing
// but the pages the guest is told to write, so every dirty bit there is one the host asked for.
#pragma once
#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>

namespace dpa::kvm {

constexpr uint64_t kPageBytes = 4096;
constexpr uint64_t kHugePageBytes = 2ull << 20;  // guest page tables map 2 MiB pages
constexpr uint64_t kGiB = 1ull << 30;
constexpr uint32_t kMaxVcpus = 8;
// Largest page list one vCPU executes per interval (the mailbox holds 8-byte GPAs).
constexpr uint64_t kMailboxEntries = 65536;

// Where things live inside the aux region (offsets from its start) and where it sits in the
// guest-physical address space: right above RAM, 2 MiB aligned, in its own memslot without
// dirty logging so page-table A/D updates and mailbox reads never show up in the measurement.
struct AuxLayout {
  uint64_t base_gpa = 0;   // first byte of the aux region (guest-physical)
  uint64_t bytes = 0;      // aux region size, a multiple of 2 MiB
  uint64_t pml4_off = 0;   // one page
  uint64_t pdpt_off = 0;   // one page (512 GiB reach: enough for every supported size)
  uint64_t gdt_off = 0;    // one page
  uint64_t code_off = 0;   // one page
  uint64_t pd_off = 0;     // pd_pages pages, one per GiB of identity-mapped space
  uint32_t pd_pages = 0;
  uint64_t mailbox_off = 0;  // vCPU i's list at mailbox_off + i * kMailboxEntries * 8
  uint32_t vcpus = 0;

  uint64_t Gpa(uint64_t off) const { return base_gpa + off; }
  uint64_t MailboxOffset(uint32_t vcpu) const { return mailbox_off + uint64_t(vcpu) * kMailboxEntries * 8; }
  // Highest guest-physical address the identity map covers (exclusive).
  uint64_t MappedEnd() const { return uint64_t(pd_pages) * kGiB; }
};

// ram_bytes must be a multiple of 1 MiB; vcpus in 1..kMaxVcpus. Throws std::out_of_range when
// the address space would exceed what one PDPT maps.
AuxLayout PlanAux(uint64_t ram_bytes, uint32_t vcpus);

// Writes page tables, GDT and guest code into the (zeroed) aux mapping.
void BuildAux(const AuxLayout& layout, uint8_t* aux_host);

// Segment and control registers for flat 64-bit mode (CS.L=1, CR0.PG|PE, CR4.PAE, EFER.LME|LMA).
// `sregs` should come from KVM_GET_SREGS (it keeps fields such as APIC base that we do not set).
void SetLongModeSregs(const AuxLayout& layout, kvm_sregs* sregs);

// Registers for one run of the guest loop: write `value` into each of `count` pages whose GPAs
// are in the mailbox at `list_gpa`, then HLT.
void SetRunRegs(const AuxLayout& layout, uint64_t list_gpa, uint64_t count, uint64_t value, kvm_regs* regs);

// The guest program (bytes and length), for tests and documentation.
const uint8_t* GuestCode(size_t* bytes);

}  // namespace dpa::kvm
