// A KVM virtual machine created by this process through /dev/kvm: guest RAM in memslot 0 with
// dirty logging (the measured region), the aux region in memslot 1 without it, 1..8 vCPUs in long
// mode, and the two ways to read which RAM pages were written: the dirty bitmap
// (KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG with manual protection) or per-vCPU dirty rings.
// Only the process that created a VM may use its fds (KVM checks kvm->mm == current->mm).
#pragma once
#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvm/guest_image.h"

namespace dpa::kvm {

enum class HarvestMode { kBitmap, kRing };

struct VmConfig {
  uint64_t guest_mib = 256;  // guest RAM, MiB
  uint32_t vcpus = 1;        // 1..8
  HarvestMode mode = HarvestMode::kBitmap;
  uint32_t ring_entries = 4096;  // ring mode: entries per vCPU, a power of two
};

// What the KVM module on this host offers (KVM_CHECK_EXTENSION / KVM_GET_SUPPORTED_CPUID).
struct KvmCapabilities {
  int api_version = 0;
  bool manual_dirty_log_protect2 = false;
  uint64_t dirty_ring_max_bytes = 0;  // 0 = no dirty ring
  int max_vcpus = 0;
  int phys_bits = 0;                  // guest-physical address width
};
KvmCapabilities ProbeCapabilities();

// The guest did something other than write its pages and halt (triple fault, failed entry...).
struct GuestError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A dirty ring received more entries than it holds (KVM must exit with
// KVM_EXIT_DIRTY_RING_FULL at its soft limit first): entries were overwritten, so the
// measurement is lost and the ring's indices can no longer be trusted.
struct RingOverflowError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class KvmVm {
 public:
  explicit KvmVm(const VmConfig& config);  // throws SysError, std::out_of_range
  ~KvmVm();
  KvmVm(const KvmVm&) = delete;
  KvmVm& operator=(const KvmVm&) = delete;

  // Releases every vCPU, VM and /dev/kvm fd and every mapping. Idempotent. No thread may be
  // inside RunVcpu or a harvest call.
  void Close();
  bool closed() const { return vm_fd_ < 0; }

  const VmConfig& config() const { return config_; }
  const AuxLayout& layout() const { return layout_; }
  uint64_t guest_pages() const { return guest_pages_; }
  uint64_t bitmap_words() const { return (guest_pages_ + 63) / 64; }
  uint8_t* ram() const { return ram_; }
  uint64_t* mailbox(uint32_t vcpu) const { return reinterpret_cast<uint64_t*>(aux_ + layout_.MailboxOffset(vcpu)); }
  uint64_t mailbox_gpa(uint32_t vcpu) const { return layout_.Gpa(layout_.MailboxOffset(vcpu)); }

  // Runs vCPU `vcpu` over the first `count` GPAs of its mailbox (storing `value` into each) until
  // it halts. Different vCPUs may run concurrently from different threads.
  // Ring mode: the list is run in pieces of at most half a ring, and the vCPU's ring is harvested
  // into `ring_spill` (guest page numbers) and reset between pieces, so the ring never relies on
  // KVM stopping the vCPU at its soft limit (on some hosts, e.g. kvm_pvm, that exit comes too
  // late and the ring overflows). A KVM_EXIT_DIRTY_RING_FULL is handled the same way.
  struct RunOutcome {
    uint32_t ring_full_exits = 0;  // KVM_EXIT_DIRTY_RING_FULL seen
    uint32_t early_harvests = 0;   // harvests between pieces of the list
  };
  RunOutcome RunVcpu(uint32_t vcpu, uint64_t count, uint64_t value, std::vector<uint64_t>* ring_spill);

  // Bitmap mode: KVM_GET_DIRTY_LOG of slot 0 into `bitmap` (bitmap_words() words), then
  // KVM_CLEAR_DIRTY_LOG of every 1 GiB chunk that has set bits (clearing exactly those bits).
  void HarvestBitmap(uint64_t* bitmap);
  // KVM_GET_DIRTY_LOG only (no clear). Fails with ENXIO in ring mode, EBADF once closed.
  void GetDirtyLog(void* bitmap);

  // Ring mode: appends the guest page numbers of vCPU `vcpu`'s harvested entries for slot 0 to
  // `pages` and marks them for reset; returns entries that named another slot or an out-of-range
  // page (never expected: only slot 0 is dirty-logged). Call ResetRings() afterwards. Only one
  // thread at a time per vCPU. Throws RingOverflowError when a whole ring's worth of entries is
  // found between two resets.
  uint64_t CollectRing(uint32_t vcpu, std::vector<uint64_t>* pages);
  // KVM_RESET_DIRTY_RINGS: re-protects the collected pages so later writes are logged again.
  void ResetRings();

 private:
  struct Vcpu {
    int fd = -1;
    kvm_run* run = nullptr;
    kvm_dirty_gfn* ring = nullptr;
    uint32_t ring_fetch = 0;  // next entry to look at (free-running index)
  };
  std::string DescribeExit(uint32_t vcpu);

  VmConfig config_;
  AuxLayout layout_{};
  uint64_t guest_pages_ = 0;
  int kvm_fd_ = -1;
  int vm_fd_ = -1;
  size_t run_bytes_ = 0;
  size_t ring_bytes_ = 0;
  uint8_t* ram_ = nullptr;
  uint64_t ram_bytes_ = 0;
  uint8_t* aux_ = nullptr;
  std::vector<Vcpu> vcpus_;
};

}  // namespace dpa::kvm
