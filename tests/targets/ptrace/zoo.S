/* zoo.S - one global function per x86-64 instruction class; each function's FIRST
 * instruction is the class under test, so a breakpoint placed on the symbol has to
 * emulate, single-step out of line, or refuse exactly that instruction.
 *
 * Built with -fcf-protection=none: no endbr64 in front. zoo_main.c calls each
 * function N times (default 10) and checks a result that depends on what the
 * instruction did; see README.md for every function's first bytes and hit count.
 *
 * Naming: zoo_* are the probe targets (a glob `zoo_*` matches exactly these);
 * helper_* set up registers/flags a C caller cannot (rax, flags, rbp) or are call
 * targets; zoodata_* are data.
 *
 * Stack-class functions are called through helper_sp_call(fn, x), which passes the
 * rsp the callee will see on entry in %rsi, so the callee can check where the
 * instruction really put the stack pointer (an emulator off by 8 returns -1).
 */

#define FUNC(name) \
	.globl name; .type name, @function; .p2align 4; name: .cfi_startproc
#define END(name) .cfi_endproc; .size name, . - name

	.text

/* long helper_sp_call(long (*fn)(long x, long entry_rsp), long x)
 * Saves %rbp itself because zoo_mov_rbp's first instruction clobbers it. */
FUNC(helper_sp_call)
	push	%rbp
	.cfi_adjust_cfa_offset 8
	mov	%rdi, %rax
	mov	%rsi, %rdi
	lea	-8(%rsp), %rsi
	call	*%rax
	pop	%rbp
	.cfi_adjust_cfa_offset -8
	ret
END(helper_sp_call)

/* 90: long zoo_nop(long x) -> x + 1 */
FUNC(zoo_nop)
	nop
	lea	1(%rdi), %rax
	ret
END(zoo_nop)

/* 0f 1f 44 00 00 (nopl 0x0(%rax,%rax,1)), spelled as bytes: gas would drop the
 * zero displacement. long zoo_nop5(long x) -> x + 5 */
FUNC(zoo_nop5)
	.byte	0x0f, 0x1f, 0x44, 0x00, 0x00
	lea	5(%rdi), %rax
	ret
END(zoo_nop5)

/* 53: long zoo_push_rbx(long x, long entry_rsp) -> x, or -1 if the slot or rsp is wrong */
FUNC(zoo_push_rbx)
	push	%rbx
	.cfi_adjust_cfa_offset 8
	lea	8(%rsp), %rax
	cmp	%rax, %rsi
	jne	1f
	cmp	(%rsp), %rbx
	jne	1f
	mov	%rdi, %rax
	pop	%rbx
	.cfi_adjust_cfa_offset -8
	ret
	.cfi_adjust_cfa_offset 8
1:	mov	$-1, %rax
	pop	%rbx
	.cfi_adjust_cfa_offset -8
	ret
END(zoo_push_rbx)

/* 41 54: long zoo_push_r12(long x, long entry_rsp) -> x, or -1 */
FUNC(zoo_push_r12)
	push	%r12
	.cfi_adjust_cfa_offset 8
	lea	8(%rsp), %rax
	cmp	%rax, %rsi
	jne	1f
	cmp	(%rsp), %r12
	jne	1f
	mov	%rdi, %rax
	pop	%r12
	.cfi_adjust_cfa_offset -8
	ret
	.cfi_adjust_cfa_offset 8
1:	mov	$-1, %rax
	pop	%r12
	.cfi_adjust_cfa_offset -8
	ret
END(zoo_push_r12)

/* 48 89 e5: long zoo_mov_rbp(long x, long entry_rsp) -> x if rbp == entry rsp, else -1.
 * Only call through helper_sp_call (it restores the caller's rbp). */
FUNC(zoo_mov_rbp)
	mov	%rsp, %rbp
	cmp	%rbp, %rsi
	jne	1f
	mov	%rdi, %rax
	ret
1:	mov	$-1, %rax
	ret
END(zoo_mov_rbp)

/* 48 83 ec 18: long zoo_sub_imm8(long x, long entry_rsp) -> x, or -1 */
FUNC(zoo_sub_imm8)
	sub	$0x18, %rsp
	.cfi_adjust_cfa_offset 0x18
	lea	0x18(%rsp), %rax
	add	$0x18, %rsp
	.cfi_adjust_cfa_offset -0x18
	cmp	%rax, %rsi
	jne	1f
	mov	%rdi, %rax
	ret
1:	mov	$-1, %rax
	ret
END(zoo_sub_imm8)

/* 48 81 ec 00 10 00 00: long zoo_sub_imm32(long x, long entry_rsp) -> x, or -1 */
FUNC(zoo_sub_imm32)
	sub	$0x1000, %rsp
	.cfi_adjust_cfa_offset 0x1000
	lea	0x1000(%rsp), %rax
	add	$0x1000, %rsp
	.cfi_adjust_cfa_offset -0x1000
	cmp	%rax, %rsi
	jne	1f
	mov	%rdi, %rax
	ret
1:	mov	$-1, %rax
	ret
END(zoo_sub_imm32)

/* eb 08: long zoo_jmp8(long x) -> x + 8 (the fall-through path returns -1) */
FUNC(zoo_jmp8)
	{disp8} jmp 1f
	mov	$-1, %rax
	ret
1:	lea	8(%rdi), %rax
	ret
END(zoo_jmp8)

/* e9 <rel32 = 0xd0>: long zoo_jmp32(long x) -> x + 32. The target is 200 int3 bytes
 * away, so a wrongly computed rel32 traps or returns -1. */
FUNC(zoo_jmp32)
	{disp32} jmp 1f
	mov	$-1, %rax
	ret
	.fill	200, 1, 0xcc
1:	lea	32(%rdi), %rax
	ret
END(zoo_jmp32)

/* long helper_jz_call(long x, long a, long b): sets ZF = (a == b), then calls zoo_jz
 * with x; the flags at zoo_jz's first instruction are the caller's. */
FUNC(helper_jz_call)
	cmp	%rdx, %rsi
	call	zoo_jz
	ret
END(helper_jz_call)

/* 74 05: long zoo_jz(long x) -> x + 200 if ZF was set on entry (taken), else x + 100 */
FUNC(zoo_jz)
	{disp8} jz 1f
	lea	100(%rdi), %rax
	ret
1:	lea	200(%rdi), %rax
	ret
END(zoo_jz)

/* e8 <rel32>: long zoo_call(long x, long entry_rsp) -> x + 3, or -1 if the pushed
 * return address is not .Lzoo_call_ret (e.g. an out-of-line copy's address) or the
 * rsp is wrong. */
FUNC(zoo_call)
	call	helper_call_target
.Lzoo_call_ret:
	ret
END(zoo_call)

FUNC(helper_call_target)
	lea	.Lzoo_call_ret(%rip), %rax
	cmp	(%rsp), %rax
	jne	1f
	lea	8(%rsp), %rax
	cmp	%rax, %rsi
	jne	1f
	lea	3(%rdi), %rax
	ret
1:	mov	$-1, %rax
	ret
END(helper_call_target)

/* c3: void zoo_ret(void) - the whole function is one ret */
FUNC(zoo_ret)
	ret
END(zoo_ret)

/* 8b 05 <rel32>: int zoo_rip_load(void) -> zoodata_counter */
FUNC(zoo_rip_load)
	mov	zoodata_counter(%rip), %eax
	ret
END(zoo_rip_load)

/* 89 3d <rel32>: void zoo_rip_store(int v) - zoodata_counter = v */
FUNC(zoo_rip_store)
	mov	%edi, zoodata_counter(%rip)
	ret
END(zoo_rip_store)

/* c7 05 <rel32> <imm32>: rip-relative with an immediate after the displacement (rip
 * is the end of the whole instruction, imm32 included). int zoo_rip_store_imm(void):
 * zoodata_scratch[1] = 0x5a5a5a5a, returns it; [0] and [2] are guards that stay 0. */
FUNC(zoo_rip_store_imm)
	movl	$0x5a5a5a5a, zoodata_scratch+4(%rip)
	mov	zoodata_scratch+4(%rip), %eax
	ret
END(zoo_rip_store_imm)

/* 48 8d 05 <rel32>: int *zoo_rip_lea(void) -> &zoodata_counter */
FUNC(zoo_rip_lea)
	lea	zoodata_counter(%rip), %rax
	ret
END(zoo_rip_lea)

/* f2 0f 10 05 <rel32>: double zoo_sse_load(long x) -> 2.5 + x */
FUNC(zoo_sse_load)
	movsd	zoodata_sse(%rip), %xmm0
	cvtsi2sd %rdi, %xmm1
	addsd	%xmm1, %xmm0
	ret
END(zoo_sse_load)

/* c5 fb 10 05 <rel32>: double zoo_avx_load(long x) -> 0.25 + x. Call only with AVX. */
FUNC(zoo_avx_load)
	vmovsd	zoodata_avx(%rip), %xmm0
	vcvtsi2sd %rdi, %xmm1, %xmm1
	vaddsd	%xmm1, %xmm0, %xmm0
	ret
END(zoo_avx_load)

/* f3 a4: char *zoo_rep_movsb(char *dst, const char *src, long unused, size_t n)
 * n arrives in %rcx (4th argument); returns dst + n (rdi after the copy).
 * Single-stepping it runs one iteration per step. */
FUNC(zoo_rep_movsb)
	rep movsb
	mov	%rdi, %rax
	ret
END(zoo_rep_movsb)

/* 9c: long zoo_pushf(long x, long entry_rsp) -> the pushed RFLAGS & 0x100 (TF; a
 * tracer that single-steps pushf leaks TF=1), or -1 if rsp is wrong */
FUNC(zoo_pushf)
	pushf
	.cfi_adjust_cfa_offset 8
	lea	8(%rsp), %rax
	cmp	%rax, %rsi
	pop	%rax
	.cfi_adjust_cfa_offset -8
	jne	1f
	and	$0x100, %eax
	ret
1:	mov	$-1, %rax
	ret
END(zoo_pushf)

/* ff d7: long zoo_call_reg(void *target, long x) -> x + 7 when target is
 * helper_icall_target and the pushed return address is .Lzoo_call_reg_ret */
FUNC(zoo_call_reg)
	call	*%rdi
.Lzoo_call_reg_ret:
	ret
END(zoo_call_reg)

FUNC(helper_icall_target)
	lea	.Lzoo_call_reg_ret(%rip), %rax
	cmp	(%rsp), %rax
	jne	1f
	lea	7(%rsi), %rax
	ret
1:	mov	$-1, %rax
	ret
END(helper_icall_target)

/* ff e7: long zoo_jmp_reg(void *target, long x) -> x + 9 when target is
 * helper_ijmp_target (which returns straight to zoo_jmp_reg's caller) */
FUNC(zoo_jmp_reg)
	jmp	*%rdi
END(zoo_jmp_reg)

FUNC(helper_ijmp_target)
	lea	9(%rsi), %rax
	ret
END(helper_ijmp_target)

/* f7 fe: int zoo_idiv(int unused, int divisor) - idiv %esi; with divisor 0 it raises
 * SIGFPE (#DE) with si_addr and the saved rip both == zoo_idiv */
FUNC(zoo_idiv)
	idiv	%esi
	ret
END(zoo_idiv)

/* 8b 07: int zoo_null_load(const int *p) -> *p; with p == NULL it raises SIGSEGV with
 * si_addr == 0 and the saved rip == zoo_null_load */
FUNC(zoo_null_load)
	mov	(%rdi), %eax
	ret
END(zoo_null_load)

/* long helper_getpid(void): rax = SYS_getpid, then calls zoo_syscall */
FUNC(helper_getpid)
	mov	$39, %eax
	call	zoo_syscall
	ret
END(helper_getpid)

/* 0f 05: syscall with the number already in rax; a tracer must refuse it */
FUNC(zoo_syscall)
	syscall
	ret
END(zoo_syscall)

/* f0 ff 05 <rel32>: int zoo_lock(void) - lock incl zoodata_lock, returns the new
 * value; a tracer must refuse it (an atomic RMW cannot be emulated from outside) */
FUNC(zoo_lock)
	lock incl zoodata_lock(%rip)
	mov	zoodata_lock(%rip), %eax
	ret
END(zoo_lock)

	.data
	.p2align 3
	.globl	zoodata_counter, zoodata_scratch, zoodata_lock
zoodata_counter:	.long 0
zoodata_lock:		.long 0
zoodata_scratch:	.long 0, 0, 0

	.section .rodata
	.p2align 3
zoodata_sse:	.double 2.5
zoodata_avx:	.double 0.25

	.section .note.GNU-stack, "", @progbits
