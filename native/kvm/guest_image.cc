#include "kvm/guest_image.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace dpa::kvm {
namespace {

// The whole guest, hand-assembled (verified with `objdump -D -b binary -mi386:x86-64`).
// Entry at offset 0 with RSI = page list (GPAs), RCX = count, RDX = value to store.
// It touches nothing in RAM except the listed pages: no stack, no data of its own.
constexpr uint8_t kCode[] = {
    0x48, 0x85, 0xc9,        // 0x00 entry: test rcx, rcx
    0x74, 0x0f,              // 0x03        je   halt          (empty list)
    0x48, 0x8b, 0x06,        // 0x05 next:  mov  rax, [rsi]    (GPA of the page)
    0x48, 0x89, 0x10,        // 0x08        mov  [rax], rdx    (the write being measured)
    0x48, 0x83, 0xc6, 0x08,  // 0x0b        add  rsi, 8
    0x48, 0xff, 0xc9,        // 0x0f        dec  rcx
    0x75, 0xf1,              // 0x12        jne  next
    0xf4,                    // 0x14 halt:  hlt                (KVM_EXIT_HLT: no in-kernel irqchip)
    0xeb, 0xe9,              // 0x15        jmp  entry         (only if resumed without new regs)
};

constexpr uint64_t kPtePresent = 1ull << 0;
constexpr uint64_t kPteWrite = 1ull << 1;
constexpr uint64_t kPteHuge = 1ull << 7;  // PS bit in a PD entry: 2 MiB page

constexpr uint16_t kCodeSelector = 0x08;
constexpr uint16_t kDataSelector = 0x10;
constexpr uint16_t kTssSelector = 0x18;

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

void Put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, sizeof v); }

}  // namespace

AuxLayout PlanAux(uint64_t ram_bytes, uint32_t vcpus) {
  if (vcpus < 1 || vcpus > kMaxVcpus) throw std::out_of_range("vcpus must be 1.." + std::to_string(kMaxVcpus));
  AuxLayout l;
  l.vcpus = vcpus;
  l.base_gpa = AlignUp(ram_bytes, kHugePageBytes);
  l.pml4_off = 0;
  l.pdpt_off = kPageBytes;
  l.gdt_off = 2 * kPageBytes;
  l.code_off = 3 * kPageBytes;
  l.pd_off = 4 * kPageBytes;
  // The identity map must also cover the aux region itself, whose size depends on the number of
  // page directories: iterate to the fixed point (converges in at most two rounds).
  uint32_t pd_pages = 1;
  for (;;) {
    uint64_t mailbox_off = AlignUp(l.pd_off + uint64_t(pd_pages) * kPageBytes, kPageBytes);
    uint64_t bytes = AlignUp(mailbox_off + uint64_t(vcpus) * kMailboxEntries * 8, kHugePageBytes);
    uint32_t need = uint32_t((l.base_gpa + bytes + kGiB - 1) / kGiB);
    if (need <= pd_pages) {
      l.mailbox_off = mailbox_off;
      l.bytes = bytes;
      l.pd_pages = pd_pages;
      break;
    }
    pd_pages = need;
  }
  if (l.pd_pages > 512) throw std::out_of_range("guest address space above 512 GiB is not supported");
  return l;
}

void BuildAux(const AuxLayout& l, uint8_t* aux) {
  Put64(aux + l.pml4_off, l.Gpa(l.pdpt_off) | kPtePresent | kPteWrite);
  for (uint32_t g = 0; g < l.pd_pages; ++g) {
    uint64_t pd_off = l.pd_off + uint64_t(g) * kPageBytes;
    Put64(aux + l.pdpt_off + 8ull * g, l.Gpa(pd_off) | kPtePresent | kPteWrite);
    for (uint64_t e = 0; e < 512; ++e) {
      uint64_t gpa = uint64_t(g) * kGiB + e * kHugePageBytes;
      Put64(aux + pd_off + 8 * e, gpa | kPtePresent | kPteWrite | kPteHuge);
    }
  }
  // GDT: null, 64-bit code, data, and a 16-byte TSS descriptor. The guest never reloads a
  // segment, but a consistent GDT keeps the hidden state we load via KVM_SET_SREGS honest.
  uint8_t* gdt = aux + l.gdt_off;
  Put64(gdt + 0x00, 0);
  Put64(gdt + 0x08, 0x00af9b000000ffffull);  // code: P, DPL0, S, type 0xb, L=1, G=1
  Put64(gdt + 0x10, 0x00cf93000000ffffull);  // data: P, DPL0, S, type 0x3, D/B=1, G=1
  Put64(gdt + 0x18, 0x00008b0000000067ull);  // TSS (busy 64-bit), base 0, limit 0x67
  Put64(gdt + 0x20, 0);
  std::memcpy(aux + l.code_off, kCode, sizeof kCode);
}

void SetLongModeSregs(const AuxLayout& l, kvm_sregs* s) {
  kvm_segment code{};
  code.base = 0;
  code.limit = 0xffffffff;
  code.selector = kCodeSelector;
  code.type = 0xb;  // execute/read, accessed
  code.present = 1;
  code.dpl = 0;
  code.db = 0;  // must be 0 when L=1
  code.s = 1;
  code.l = 1;
  code.g = 1;
  kvm_segment data = code;
  data.selector = kDataSelector;
  data.type = 0x3;  // read/write, accessed
  data.db = 1;
  data.l = 0;
  s->cs = code;
  s->ds = s->es = s->fs = s->gs = s->ss = data;

  kvm_segment tr{};
  tr.selector = kTssSelector;
  tr.limit = 0x67;
  tr.type = 0xb;  // busy 64-bit TSS: VMX entry checks insist on it even if never used
  tr.present = 1;
  s->tr = tr;
  kvm_segment ldt{};
  ldt.type = 0x2;
  ldt.unusable = 1;
  s->ldt = ldt;

  s->gdt.base = l.Gpa(l.gdt_off);
  s->gdt.limit = 5 * 8 - 1;
  // No IDT: the guest raises no exceptions; if it ever did, the triple fault becomes
  // KVM_EXIT_SHUTDOWN, which the host reports as a guest error.
  s->idt.base = 0;
  s->idt.limit = 0;

  s->cr3 = l.Gpa(l.pml4_off);
  s->cr4 = 1ull << 5;  // PAE
  s->cr0 = (1ull << 0) | (1ull << 1) | (1ull << 4) | (1ull << 5) | (1ull << 16) | (1ull << 31);  // PE MP ET NE WP PG
  s->efer = (1ull << 8) | (1ull << 10);                                                           // LME LMA
}

void SetRunRegs(const AuxLayout& l, uint64_t list_gpa, uint64_t count, uint64_t value, kvm_regs* r) {
  std::memset(r, 0, sizeof *r);
  r->rip = l.Gpa(l.code_off);
  r->rflags = 0x2;  // reserved bit 1; IF=0 so nothing can interrupt the loop
  r->rsi = list_gpa;
  r->rcx = count;
  r->rdx = value;
}

const uint8_t* GuestCode(size_t* bytes) {
  *bytes = sizeof kCode;
  return kCode;
}

}  // namespace dpa::kvm
