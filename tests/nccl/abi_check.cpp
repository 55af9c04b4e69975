// gacc's NCCL declarations (src/distributed/nccl.rs) against the real nccl.h, at
// compile time. tests/nccl_real.rs writes gacc_nccl_expected.h from the Rust side (the
// constants nccl.rs uses, the size of its ncclUniqueId, and every entry point's Rust
// type spelled as a C++ function-pointer type) and compiles this file with
// g++ -std=c++17 -fsyntax-only against nccl.h; each mismatch is a static_assert
// failure whose message names the item.
#include <cstddef>
#include <type_traits>

#include <nccl.h>

namespace gacc_abi {

template <class T, class = void>
struct is_complete : std::false_type {};
template <class T>
struct is_complete<T, std::void_t<decltype(sizeof(T))>> : std::true_type {};

// Can a value of gacc's type G stand where nccl.h has R, under the x86-64/aarch64
// C calling conventions? Same type; an enum and an integer of one size (C enums are
// passed as ints); pointers with the same constness to compatible pointees, where
// gacc's void stands only for an opaque (incomplete) struct such as ncclComm or
// CUstream_st; structs passed by value with the same size and alignment.
template <class R, class G>
constexpr bool compatible() {
    if constexpr (std::is_same_v<R, G>) {
        return true;
    } else if constexpr (std::is_enum_v<R> && std::is_integral_v<G>) {
        return sizeof(R) == sizeof(G);
    } else if constexpr (std::is_pointer_v<R> && std::is_pointer_v<G>) {
        using RP = std::remove_pointer_t<R>;
        using GP = std::remove_pointer_t<G>;
        if constexpr (std::is_const_v<RP> != std::is_const_v<GP>) {
            return false;
        } else if constexpr (std::is_void_v<std::remove_cv_t<GP>> && std::is_class_v<std::remove_cv_t<RP>>) {
            return !is_complete<std::remove_cv_t<RP>>::value;
        } else {
            return compatible<std::remove_cv_t<RP>, std::remove_cv_t<GP>>();
        }
    } else if constexpr (std::is_class_v<R> && std::is_class_v<G>) {
        return sizeof(R) == sizeof(G) && alignof(R) == alignof(G) && std::is_trivially_copyable_v<R> &&
               std::is_trivially_copyable_v<G>;
    } else {
        return false;
    }
}

template <class R, class G>
struct same_fn : std::false_type {};
template <class RR, class... RA, class GR, class... GA>
struct same_fn<RR (*)(RA...), GR (*)(GA...)> {
    static constexpr bool args() {
        if constexpr (sizeof...(RA) != sizeof...(GA)) {
            return false;
        } else {
            return (true && ... && compatible<RA, GA>());
        }
    }
    static constexpr bool value = compatible<RR, GR>() && args();
};

}  // namespace gacc_abi

#include "gacc_nccl_expected.h"
