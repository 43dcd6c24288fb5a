/* kernels_undef.h - ends one instruction set's vector vocabulary in
 * kernels.c, so the next one can define the same names. Included only
 * there. */
#undef VT
#undef VZERO
#undef VLOAD
#undef VLOADH
#undef VSET1
#undef VFMA
#undef VMUL
#undef VPAIR
#undef VBW
#undef VBLOAD
#undef VDPBF
#undef VSTORE
#undef IT
#undef IZERO
#undef ICVT
#undef IW8
#undef ILOAD8
#undef IDOT8
#undef IFIX8
#undef IFIX4
#undef IADD
#undef IWU
#undef IQ4
#undef IDOTU
#undef IGROUP_OK
#undef IQ4GROUP
#undef II8GROUP
