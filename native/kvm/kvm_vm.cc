#include "kvm/kvm_vm.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/errors.h"

namespace dpa::kvm {
namespace {

int OpenKvm() {
  int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) ThrowSys("open", errno, "/dev/kvm: this process needs read-write access to KVM");
  int version = ::ioctl(fd, KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION) {
    int err = version < 0 ? errno : EPROTO;
    ::close(fd);
    ThrowSys("ioctl(KVM_GET_API_VERSION)", err, "expected KVM API version " + std::to_string(KVM_API_VERSION));
  }
  return fd;
}

// <linux/kvm.h> declares kvm_cpuid2's flexible array through __DECLARE_FLEX_ARRAY, whose empty
// struct member has size 1 in C++: sizeof(kvm_cpuid2) becomes 12 instead of 8, so the ioctl
// numbers derived from it are wrong (KVM answers EINVAL) and `entries` sits at the wrong offset.
// Use the kernel's C layout explicitly: 8-byte header, entries right after it.
struct CpuidHeader {
  uint32_t nent;
  uint32_t padding;
};
constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);

// KVM_GET_SUPPORTED_CPUID: everything the host can expose. Setting it on every vCPU gives the
// guest long mode (KVM rejects EFER.LME for a vCPU whose CPUID lacks LM) and the host's
// guest-physical address width instead of the 36-bit default.
std::vector<uint8_t> SupportedCpuid(int kvm_fd) {
  for (uint32_t nent = 128; nent <= 4096; nent *= 2) {
    std::vector<uint8_t> buf(sizeof(CpuidHeader) + nent * sizeof(kvm_cpuid_entry2));
    CpuidHeader header{nent, 0};
    std::memcpy(buf.data(), &header, sizeof header);
    if (::ioctl(kvm_fd, kGetSupportedCpuid, buf.data()) == 0) return buf;
    if (errno != E2BIG) ThrowSys("ioctl(KVM_GET_SUPPORTED_CPUID)");
  }
  ThrowSys("ioctl(KVM_GET_SUPPORTED_CPUID)", E2BIG);
}

int PhysBits(const std::vector<uint8_t>& buf) {
  CpuidHeader header;
  std::memcpy(&header, buf.data(), sizeof header);
  for (uint32_t i = 0; i < header.nent; ++i) {
    kvm_cpuid_entry2 e;
    std::memcpy(&e, buf.data() + sizeof header + i * sizeof e, sizeof e);
    if (e.function == 0x80000008) return int(e.eax & 0xff);
  }
  return 36;  // what KVM assumes without leaf 0x80000008
}

void EnableCap(int vm_fd, uint32_t cap, uint64_t arg0, const char* what) {
  kvm_enable_cap ec{};
  ec.cap = cap;
  ec.args[0] = arg0;
  if (::ioctl(vm_fd, KVM_ENABLE_CAP, &ec) < 0) ThrowSys("ioctl(KVM_ENABLE_CAP)", errno, what);
}

const char* ExitName(uint32_t reason) {
  switch (reason) {
    case KVM_EXIT_SHUTDOWN: return "KVM_EXIT_SHUTDOWN (triple fault)";
    case KVM_EXIT_FAIL_ENTRY: return "KVM_EXIT_FAIL_ENTRY";
    case KVM_EXIT_INTERNAL_ERROR: return "KVM_EXIT_INTERNAL_ERROR";
    case KVM_EXIT_IO: return "KVM_EXIT_IO";
    case KVM_EXIT_MMIO: return "KVM_EXIT_MMIO";
    case KVM_EXIT_EXCEPTION: return "KVM_EXIT_EXCEPTION";
    default: return "unexpected exit";
  }
}

}  // namespace

KvmCapabilities ProbeCapabilities() {
  KvmCapabilities caps;
  int fd = OpenKvm();
  caps.api_version = KVM_API_VERSION;
  caps.manual_dirty_log_protect2 = ::ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) > 0;
  int ring = ::ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);
  caps.dirty_ring_max_bytes = ring > 0 ? uint64_t(ring) : 0;
  int max_vcpus = ::ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
  caps.max_vcpus = max_vcpus > 0 ? max_vcpus : 0;
  try {
    caps.phys_bits = PhysBits(SupportedCpuid(fd));
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return caps;
}

KvmVm::KvmVm(const VmConfig& config) : config_(config) {
  if (config.vcpus < 1 || config.vcpus > kMaxVcpus) throw std::out_of_range("vcpus must be 1..8");
  if (config.guest_mib < 1 || config.guest_mib > (1ull << 20)) throw std::out_of_range("guestMib out of range");
  if (config.mode == HarvestMode::kRing &&
      (config.ring_entries < 256 || config.ring_entries > 65536 || (config.ring_entries & (config.ring_entries - 1)) != 0))
    throw std::out_of_range("ringEntries must be a power of two from 256 to 65536");
  ram_bytes_ = config.guest_mib << 20;
  guest_pages_ = ram_bytes_ / kPageBytes;
  layout_ = PlanAux(ram_bytes_, config.vcpus);
  try {
    kvm_fd_ = OpenKvm();
    std::vector<uint8_t> cpuid = SupportedCpuid(kvm_fd_);
    const int phys_bits = PhysBits(cpuid);
    if (layout_.base_gpa + layout_.bytes > (1ull << phys_bits))
      throw std::out_of_range("guestMib too large for this host's " + std::to_string(phys_bits) + "-bit guest-physical addresses");

    vm_fd_ = ::ioctl(kvm_fd_, KVM_CREATE_VM, 0);
    if (vm_fd_ < 0) ThrowSys("ioctl(KVM_CREATE_VM)");

    if (config.mode == HarvestMode::kBitmap) {
      if (::ioctl(vm_fd_, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) <= 0)
        ThrowSys("ioctl(KVM_CHECK_EXTENSION)", EOPNOTSUPP,
                 "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is not supported by this kernel; harvest mode 'bitmap' needs it");
      // Manual protect, NOT initially-set: the log starts empty and KVM_GET_DIRTY_LOG only
      // copies; the pages are re-protected by our KVM_CLEAR_DIRTY_LOG, chunk by chunk.
      EnableCap(vm_fd_, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
                "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2");
    } else {
      int max_bytes = ::ioctl(vm_fd_, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);
      if (max_bytes <= 0)
        ThrowSys("ioctl(KVM_CHECK_EXTENSION)", EOPNOTSUPP,
                 "KVM_CAP_DIRTY_LOG_RING is not supported by this kernel; harvest mode 'ring' needs it");
      ring_bytes_ = uint64_t(config.ring_entries) * sizeof(kvm_dirty_gfn);
      if (ring_bytes_ > uint64_t(max_bytes))
        throw std::out_of_range("ringEntries exceeds this kernel's maximum of " + std::to_string(max_bytes / 16));
      // Must precede vCPU creation: each vCPU allocates its ring when created.
      EnableCap(vm_fd_, KVM_CAP_DIRTY_LOG_RING, ring_bytes_, "KVM_CAP_DIRTY_LOG_RING");
    }

    // MAP_NORESERVE + untouched: a 16 GiB guest costs only the pages it writes. No THP (each
    // first write would otherwise allocate 2 MiB), no fork copy (KVM's MMU notifiers would see
    // the COW protection of a child process as guest memory changes), no core dump.
    void* ram = ::mmap(nullptr, ram_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ram == MAP_FAILED) ThrowSys("mmap", errno, "guest RAM");
    ram_ = static_cast<uint8_t*>(ram);
    ::madvise(ram_, ram_bytes_, MADV_NOHUGEPAGE);
    ::madvise(ram_, ram_bytes_, MADV_DONTFORK);
    ::madvise(ram_, ram_bytes_, MADV_DONTDUMP);
    void* aux = ::mmap(nullptr, layout_.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (aux == MAP_FAILED) ThrowSys("mmap", errno, "aux region");
    aux_ = static_cast<uint8_t*>(aux);
    ::madvise(aux_, layout_.bytes, MADV_NOHUGEPAGE);
    ::madvise(aux_, layout_.bytes, MADV_DONTFORK);
    BuildAux(layout_, aux_);

    kvm_userspace_memory_region ram_slot{};
    ram_slot.slot = 0;
    ram_slot.flags = KVM_MEM_LOG_DIRTY_PAGES;
    ram_slot.guest_phys_addr = 0;
    ram_slot.memory_size = ram_bytes_;
    ram_slot.userspace_addr = reinterpret_cast<uint64_t>(ram_);
    if (::ioctl(vm_fd_, KVM_SET_USER_MEMORY_REGION, &ram_slot) < 0) ThrowSys("ioctl(KVM_SET_USER_MEMORY_REGION)", errno, "slot 0 (RAM)");
    kvm_userspace_memory_region aux_slot{};
    aux_slot.slot = 1;
    aux_slot.flags = 0;
    aux_slot.guest_phys_addr = layout_.base_gpa;
    aux_slot.memory_size = layout_.bytes;
    aux_slot.userspace_addr = reinterpret_cast<uint64_t>(aux_);
    if (::ioctl(vm_fd_, KVM_SET_USER_MEMORY_REGION, &aux_slot) < 0) ThrowSys("ioctl(KVM_SET_USER_MEMORY_REGION)", errno, "slot 1 (aux)");

    int run_bytes = ::ioctl(kvm_fd_, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_bytes <= 0) ThrowSys("ioctl(KVM_GET_VCPU_MMAP_SIZE)");
    run_bytes_ = size_t(run_bytes);
    const long page = ::sysconf(_SC_PAGESIZE);
    vcpus_.resize(config.vcpus);
    for (uint32_t i = 0; i < config.vcpus; ++i) {
      Vcpu& v = vcpus_[i];
      const std::string which = "vCPU " + std::to_string(i);
      v.fd = ::ioctl(vm_fd_, KVM_CREATE_VCPU, i);  // KVM returns vCPU fds with O_CLOEXEC set
      if (v.fd < 0) ThrowSys("ioctl(KVM_CREATE_VCPU)", errno, which);
      if (::ioctl(v.fd, kSetCpuid2, cpuid.data()) < 0) ThrowSys("ioctl(KVM_SET_CPUID2)", errno, which);
      void* run = ::mmap(nullptr, run_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, v.fd, 0);
      if (run == MAP_FAILED) ThrowSys("mmap", errno, "kvm_run of " + which);
      v.run = static_cast<kvm_run*>(run);
      if (config.mode == HarvestMode::kRing) {
        void* ring = ::mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, v.fd, KVM_DIRTY_LOG_PAGE_OFFSET * page);
        if (ring == MAP_FAILED) ThrowSys("mmap", errno, "dirty ring of " + which);
        v.ring = static_cast<kvm_dirty_gfn*>(ring);
      }
      kvm_sregs sregs{};
      if (::ioctl(v.fd, KVM_GET_SREGS, &sregs) < 0) ThrowSys("ioctl(KVM_GET_SREGS)", errno, which);
      SetLongModeSregs(layout_, &sregs);
      if (::ioctl(v.fd, KVM_SET_SREGS, &sregs) < 0) ThrowSys("ioctl(KVM_SET_SREGS)", errno, which);
    }
  } catch (...) {
    Close();
    throw;
  }
}

KvmVm::~KvmVm() { Close(); }

void KvmVm::Close() {
  for (Vcpu& v : vcpus_) {
    if (v.ring) ::munmap(v.ring, ring_bytes_);
    if (v.run) ::munmap(v.run, run_bytes_);
    if (v.fd >= 0) ::close(v.fd);
    v = Vcpu{};
  }
  vcpus_.clear();
  if (vm_fd_ >= 0) ::close(vm_fd_);
  vm_fd_ = -1;  // later ioctls fail cleanly with EBADF instead of hitting a reused fd number
  if (kvm_fd_ >= 0) ::close(kvm_fd_);
  kvm_fd_ = -1;
  if (aux_) ::munmap(aux_, layout_.bytes);
  aux_ = nullptr;
  if (ram_) ::munmap(ram_, ram_bytes_);
  ram_ = nullptr;
}

std::string KvmVm::DescribeExit(uint32_t vcpu) {
  const Vcpu& v = vcpus_[vcpu];
  const uint32_t reason = v.run->exit_reason;
  char buf[256];
  kvm_regs regs{};
  unsigned long long rip = ::ioctl(v.fd, KVM_GET_REGS, &regs) == 0 ? regs.rip : 0;
  unsigned long long extra = 0;
  if (reason == KVM_EXIT_FAIL_ENTRY) extra = v.run->fail_entry.hardware_entry_failure_reason;
  if (reason == KVM_EXIT_INTERNAL_ERROR) extra = v.run->internal.suberror;
  std::snprintf(buf, sizeof buf, "guest on vCPU %u stopped with %s (exit reason %u, detail %llu) at rip 0x%llx", vcpu,
                ExitName(reason), reason, extra, rip);
  return buf;
}

KvmVm::RunOutcome KvmVm::RunVcpu(uint32_t vcpu, uint64_t count, uint64_t value, std::vector<uint64_t>* ring_spill) {
  if (vcpu >= vcpus_.size()) ThrowSys("ioctl(KVM_RUN)", EBADF, "vCPU " + std::to_string(vcpu) + " does not exist or the VM is closed");
  if (count > kMailboxEntries) throw std::out_of_range("page list longer than the mailbox");
  Vcpu& v = vcpus_[vcpu];
  RunOutcome outcome;
  // Each page write pushes at most one ring entry, so half a ring per piece leaves the other
  // half (well beyond KVM's 64-entry reserve) for any lateness of the soft-full exit.
  const uint64_t piece = v.ring ? ring_bytes_ / sizeof(kvm_dirty_gfn) / 2 : kMailboxEntries;
  uint64_t done = 0;
  do {
    const uint64_t n = std::min(piece, count - done);
    kvm_regs regs;
    SetRunRegs(layout_, mailbox_gpa(vcpu) + done * 8, n, value, &regs);
    if (::ioctl(v.fd, KVM_SET_REGS, &regs) < 0) ThrowSys("ioctl(KVM_SET_REGS)", errno, "vCPU " + std::to_string(vcpu));
    for (bool halted = false; !halted;) {
      if (::ioctl(v.fd, KVM_RUN, 0) < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        ThrowSys("ioctl(KVM_RUN)", errno, "vCPU " + std::to_string(vcpu));
      }
      switch (v.run->exit_reason) {
        case KVM_EXIT_HLT:
          halted = true;
          break;
        case KVM_EXIT_INTR:
          break;
        case KVM_EXIT_DIRTY_RING_FULL: {
          // KVM refuses to re-enter until this vCPU's ring has room: harvest it now into the
          // interval's spill list (the pages stay part of this interval's measurement).
          const size_t before = ring_spill->size();
          CollectRing(vcpu, ring_spill);
          // KVM keeps exiting while the ring is over its soft limit: if nothing was there to
          // harvest, its indices no longer agree with ours and the guest would spin here forever.
          if (ring_spill->size() == before)
            throw RingOverflowError("dirty ring of vCPU " + std::to_string(vcpu) +
                                    " is full but holds no harvestable entry (it overflowed earlier)");
          ResetRings();
          ++outcome.ring_full_exits;
          break;
        }
        default:
          throw GuestError(DescribeExit(vcpu));
      }
    }
    done += n;
    if (v.ring && done < count) {
      CollectRing(vcpu, ring_spill);
      ResetRings();
      ++outcome.early_harvests;
    }
  } while (done < count);
  return outcome;
}

void KvmVm::GetDirtyLog(void* bitmap) {
  kvm_dirty_log log{};
  log.slot = 0;
  log.dirty_bitmap = bitmap;
  if (::ioctl(vm_fd_, KVM_GET_DIRTY_LOG, &log) < 0) ThrowSys("ioctl(KVM_GET_DIRTY_LOG)", errno, "slot 0");
}

void KvmVm::HarvestBitmap(uint64_t* bitmap) {
  GetDirtyLog(bitmap);
  constexpr uint64_t kChunkWords = (kGiB / kPageBytes) / 64;
  const uint64_t words = bitmap_words();
  for (uint64_t chunk = 0; chunk < words; chunk += kChunkWords) {
    const uint64_t end = std::min(words, chunk + kChunkWords);
    uint64_t first = chunk;
    while (first < end && bitmap[first] == 0) ++first;
    if (first == end) continue;
    uint64_t last = end;
    while (bitmap[last - 1] == 0) --last;
    // 64-page aligned by construction (whole words); only the span holding set bits is passed,
    // and KVM re-protects exactly the pages whose bits we hand back.
    kvm_clear_dirty_log clear{};
    clear.slot = 0;
    clear.first_page = first * 64;
    clear.num_pages = uint32_t(std::min<uint64_t>((last - first) * 64, guest_pages_ - first * 64));
    clear.dirty_bitmap = bitmap + first;
    if (::ioctl(vm_fd_, KVM_CLEAR_DIRTY_LOG, &clear) < 0) ThrowSys("ioctl(KVM_CLEAR_DIRTY_LOG)", errno, "slot 0");
  }
}

uint64_t KvmVm::CollectRing(uint32_t vcpu, std::vector<uint64_t>* pages) {
  if (vcpu >= vcpus_.size() || !vcpus_[vcpu].ring) return 0;
  Vcpu& v = vcpus_[vcpu];
  const uint32_t mask = uint32_t(ring_bytes_ / sizeof(kvm_dirty_gfn)) - 1;
  uint64_t foreign = 0;
  uint64_t collected = 0;
  for (;;) {
    kvm_dirty_gfn* e = &v.ring[v.ring_fetch & mask];
    // Acquire pairs with KVM's release when it publishes the entry: slot/offset are valid once
    // DIRTY is seen. An entry already marked RESET (but not yet reset) is never at fetch.
    const uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);
    if ((flags & KVM_DIRTY_GFN_F_MASK) != KVM_DIRTY_GFN_F_DIRTY) break;
    const uint32_t slot = e->slot;
    const uint64_t offset = e->offset;
    if (slot == 0 && offset < guest_pages_) pages->push_back(offset);
    else ++foreign;
    // Release: KVM may recycle the entry only after we are done reading it.
    __atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
    ++v.ring_fetch;
    ++collected;
  }
  // KVM stops the vCPU at its soft limit (size minus a reserve); a completely dirty ring means
  // it went past it and overwrote entries we had not read.
  if (collected >= mask + 1ull)
    throw RingOverflowError("dirty ring of vCPU " + std::to_string(vcpu) + " overflowed: " + std::to_string(collected) +
                            " entries without a reset; KVM did not stop the vCPU at the ring's soft limit");
  return foreign;
}

void KvmVm::ResetRings() {
  if (::ioctl(vm_fd_, KVM_RESET_DIRTY_RINGS, 0) < 0) ThrowSys("ioctl(KVM_RESET_DIRTY_RINGS)");
}

}  // namespace dpa::kvm
