/*
 * Concept: the header and the library agree on the version and the ABI.
 * gacc_version() == GACC_VERSION, gacc_version_number() == GACC_VERSION_NUMBER ==
 * MAJOR * 10000 + MINOR * 100 + PATCH, the string is "MAJOR.MINOR.PATCH",
 * gacc_abi_version() == GACC_ABI_VERSION.
 */
#include "check.h"

#define STR_(x) #x
#define STR(x) STR_(x)

int main(void) {
    const char *v = gacc_version();
    CHECK(v != NULL);
    if (!v) return check_finish("test_version");
    printf("gacc_version() = \"%s\", GACC_VERSION = \"%s\", number %u, ABI %u\n", v, GACC_VERSION,
           gacc_version_number(), gacc_abi_version());
    CHECK_MSG(strcmp(v, GACC_VERSION) == 0, "library %s, header %s", v, GACC_VERSION);
    CHECK(gacc_version_number() == GACC_VERSION_NUMBER);
    CHECK(GACC_VERSION_NUMBER == GACC_VERSION_MAJOR * 10000 + GACC_VERSION_MINOR * 100 + GACC_VERSION_PATCH);
    CHECK(strcmp(GACC_VERSION, STR(GACC_VERSION_MAJOR) "." STR(GACC_VERSION_MINOR) "." STR(GACC_VERSION_PATCH)) == 0);
    CHECK(gacc_abi_version() == GACC_ABI_VERSION);
    CHECK(gacc_version() == v); /* a static string */
    return check_finish("test_version");
}
